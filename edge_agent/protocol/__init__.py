"""The sensor wire protocol (firmware_bridge/PROTOCOL.md): frames, their codec, the stream decoder."""
