"""Verify a candidate model pack before it is staged (docs/UPDATES.md, "Verification before
staging").

Why one function: a pack that arrived over MQTT is about to take over a gateway's monitoring,
so every check that can fail runs here, before it goes anywhere near ``models/``, in the
documented order, and the first failure is the one reason reported to the fleet:

1. ``manifest_hash`` / ``manifest`` — the pack reads back whole (edge_agent/pack.py:
   ``read_pack``; its ``PackError.reason``);
2. ``unsigned`` / ``unknown_key`` / ``bad_signature`` — signed by a trusted key
   (edge_agent/signing.py), with no way to skip it;
3. ``not_tflite`` — ``model.tflite`` carries the TFLite file identifier ``TFL3`` (bytes 4..8)
   and the interpreter loads it;
4. ``tensors`` — its tensors match the manifest (shape, dtype, quantisation);
5. ``self_test`` — the reference vectors give the expected outputs, and no NaN/Inf.

3 to 5 are the load of :class:`edge_agent.pack_scorer.PackScorer` (through
edge_agent/model_runtime.py), which tags its ``PackError`` with those reasons; the scorer it
builds is returned, so the caller shadows or activates exactly what was verified. Any other
load problem (feature pipeline, thresholds, an unexpected exception) is ``manifest``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.pack import PackError, read_pack
from edge_agent.pack_scorer import PackScorer
from edge_agent.signing import SignatureError, verify_pack_signature

REASONS = ("manifest_hash", "manifest", "unsigned", "unknown_key", "bad_signature", "not_tflite", "tensors",
           "self_test")
TFLITE_IDENTIFIER = b"TFL3"


class UpdateRejected(Exception):
    """A candidate pack refused. ``reason``: one of :data:`REASONS`; ``message``: one line."""

    def __init__(self, reason: str, message: str) -> None:
        message = " ".join(str(message).split())  # interpreter errors can span lines
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def _without_path(exc: Exception, path: Path) -> str:
    message, prefix = str(exc), f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def verify_candidate(pack_path: str | os.PathLike[str], trusted_keys: Mapping[str, Any], cfg: Any) -> PackScorer:
    """Run every check on the pack at ``pack_path``; return its loaded PackScorer, or raise
    UpdateRejected with the first failure's reason. ``trusted_keys``: key id -> public key
    (``signing.load_trusted_keys(dir).keys``); ``cfg``: the agent's config (``[model]``
    backend and threads, feature defaults)."""
    path = Path(pack_path)
    try:
        pack = read_pack(path)
    except PackError as exc:
        # bad_signature: signature.json is not JSON (read_pack parses it)
        reason = exc.reason if exc.reason in ("manifest_hash", "manifest", "bad_signature") else "manifest"
        raise UpdateRejected(reason, _without_path(exc, path)) from None
    try:
        verify_pack_signature(pack, trusted_keys)
    except SignatureError as exc:
        raise UpdateRejected(exc.reason, exc.message) from None
    tflite = pack.members["model.tflite"]
    if tflite[4:8] != TFLITE_IDENTIFIER:
        raise UpdateRejected("not_tflite", f"model.tflite is not a TFLite flatbuffer (file identifier "
                                           f"{tflite[4:8]!r}, expected {TFLITE_IDENTIFIER!r})")
    try:
        scorer = PackScorer(str(path), cfg)
    except PackError as exc:
        reason = exc.reason if exc.reason in ("not_tflite", "tensors", "self_test", "manifest_hash") else "manifest"
        raise UpdateRejected(reason, _without_path(exc, path)) from None
    except Exception as exc:  # a signed pack is still untrusted input: never crash the agent
        raise UpdateRejected("manifest", f"cannot be loaded: {type(exc).__name__}: {exc}") from None
    if scorer.pack.manifest_bytes != pack.manifest_bytes or scorer.pack.signature != pack.signature:
        raise UpdateRejected("manifest_hash", "the pack file changed while it was being verified")
    return scorer
