"""Line errors for the MCU emulator's ``--corrupt RATE``: damage a frame's encoded bytes.

Why: the gateway's decoder must reject every damaged frame (COBS or CRC-32) and lose no
other frame. The damage stays strictly inside one frame's COBS-encoded bytes and never
creates or removes a 0x00, so the frame's delimiter survives and the receiver is back in
step at the very next frame: one corrupted frame costs that frame and nothing else.

Kinds, as a UART or a USB-serial bridge produces them:

* ``bitflip``  — 1 to 3 bits flipped (noise, a marginal baud rate);
* ``drop``     — 1 to 8 consecutive bytes lost (receiver overrun);
* ``insert``   — 1 to 8 spurious non-zero bytes (glitches on the line);
* ``truncate`` — the frame cut short, its tail lost (MCU reset or buffer flush mid-frame).

Which frames are hit is a pure function of (seed, stream, seq) (:func:`corruption_for`),
so the same seed damages the same frames the same way whatever the pacing.
"""
from __future__ import annotations

import random

KINDS = ("bitflip", "drop", "insert", "truncate")


def corruption_for(seed: int, stream: str, seq: int, rate: float) -> random.Random | None:
    """The random source that damages frame ``seq`` of ``stream``, or None to leave it intact.

    ``rate`` is the probability that a frame is damaged.
    """
    if rate <= 0:
        return None
    rng = random.Random(f"edge-agent-corrupt/{seed}/{stream}/{seq}")
    return rng if rng.random() < rate else None


def corrupt(encoded: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Damage ``encoded`` (one COBS-encoded frame, without its 0x00 delimiter).

    Returns ``(damaged, kind)``. The result is never empty, never contains 0x00 and always
    differs from ``encoded``.
    """
    if not encoded or 0 in encoded:
        raise ValueError("expects one COBS-encoded frame: non-empty and without 0x00")
    kind = rng.choice(KINDS)
    data = bytearray(encoded)
    n = len(data)
    if kind == "bitflip":
        for pos in rng.sample(range(n), min(n, rng.randint(1, 3))):
            bits = [b for b in range(8) if data[pos] ^ (1 << b)]  # never flip a byte to 0x00
            data[pos] ^= 1 << rng.choice(bits)
    elif kind == "drop" and n > 1:
        count = rng.randint(1, min(8, n - 1))
        pos = rng.randrange(n - count + 1)
        del data[pos:pos + count]
    elif kind == "insert" or n == 1:  # a one-byte frame cannot lose bytes and stay non-empty
        kind = "insert"
        pos = rng.randrange(n + 1)
        data[pos:pos] = bytes(rng.randint(1, 255) for _ in range(rng.randint(1, 8)))
    else:  # truncate
        data = data[:rng.randint(1, n - 1)]
    return bytes(data), kind
