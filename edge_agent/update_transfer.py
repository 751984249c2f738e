"""Receiving a model pack in chunks over MQTT (docs/UPDATES.md, "Transfer").

Why chunks and a store on disk: a gateway's link to the broker drops, and so does its power.
A pack of up to ``[updates] max_pack_mb`` must still arrive whole and unaltered, without
starting over each time. So the fleet first sends an **offer** (the transfer manifest: the
pack's size and sha256, the chunk size and every chunk's sha256), then the chunks the device
asks for. Each chunk is checked against the offer's hash *before* it is written, and written
by temp file, fsync and rename, so a ``<index>.chunk`` file on disk is a verified chunk.
After a reconnect or a restart the device asks only for the chunks it does not hold.

Layout, under ``storage/updates`` (0750)::

    <update_id>/offer.json       the offer, exactly as parse_offer accepts it
    <update_id>/<index>.chunk    verified chunks
    <update_id>/candidate.pack   the assembled pack (assemble_file), before verification

At most one update is in progress: beginning another abandons the first (its directory is
removed). Nothing from the wire names a file but ``update_id`` (16 hex digits) and a chunk
index (an int below ``chunks``; :func:`parse_index` reads it from the topic).

Every failure is a :class:`TransferError` with a ``reason`` from docs/UPDATES.md
(``oversize``, ``chunk_hash``, ``truncated``, ``pack_hash``) or one of ``json``, ``schema``,
``field`` for an offer or chunk that is malformed, and a one-line message.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time as _time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from edge_agent.durable import fsync_dir, sha256_file, write_atomic

log = logging.getLogger(__name__)

OFFER_SCHEMA = 1
MAX_OFFER_BYTES = 1 << 20
MAX_REQUEST_INDICES = 64
MODES = ("shadow", "activate")
REASONS = ("json", "schema", "field", "oversize", "chunk_hash", "truncated", "pack_hash")
OFFER_FILE = "offer.json"
CANDIDATE_FILE = "candidate.pack"
_UPDATE_ID = re.compile(r"[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
_CHUNK_FILE = re.compile(r"(0|[1-9][0-9]*)\.chunk")


class TransferError(ValueError):
    """An offer or chunk refused. ``reason``: one of :data:`REASONS`; ``message``: one line."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        message = " ".join(str(message).split())
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Offer:
    update_id: str
    mode: str
    pack_name: str
    pack_version: str
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    chunk_sha256: tuple[str, ...]
    time: float

    def chunk_length(self, index: int) -> int:
        """Bytes of chunk ``index``: ``chunk_size``, the last one the remainder."""
        return self.chunk_size if index < self.chunks - 1 else self.size - self.chunk_size * (self.chunks - 1)

    def to_json(self) -> bytes:
        """The offer's wire form (the retained ``{base}/model/offer`` payload)."""
        doc = {"schema": OFFER_SCHEMA, "update_id": self.update_id, "mode": self.mode, "time": self.time,
               "pack": {"name": self.pack_name, "version": self.pack_version, "size": self.size, "sha256": self.sha256},
               "chunk_size": self.chunk_size, "chunks": self.chunks, "chunk_sha256": list(self.chunk_sha256)}
        return json.dumps(doc, separators=(",", ":")).encode()


def _short(value: object) -> str:
    text = repr(value)  # repr: no control characters from the wire reach a log line
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_offer(payload: bytes, max_pack_bytes: int, max_chunk_bytes: int) -> Offer:
    """Check an offer (docs/UPDATES.md, "Offer") before anything is stored; raise TransferError."""
    if len(payload) > MAX_OFFER_BYTES:
        raise TransferError("json", f"offer of {len(payload)} bytes, at most {MAX_OFFER_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TransferError("json", f"offer is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TransferError("json", "offer is not a JSON object")
    missing = [k for k in ("schema", "update_id", "mode", "time", "pack", "chunk_size", "chunks", "chunk_sha256")
               if k not in doc]
    if missing:
        raise TransferError("schema", f"offer lacks {', '.join(missing)}")
    if not _is_int(doc["schema"]) or doc["schema"] != OFFER_SCHEMA:
        raise TransferError("schema", f"offer schema {_short(doc['schema'])}, this agent reads {OFFER_SCHEMA}")
    pack = doc["pack"]
    if not isinstance(pack, dict):
        raise TransferError("schema", "offer 'pack' is not an object")
    missing = [k for k in ("name", "version", "size", "sha256") if k not in pack]
    if missing:
        raise TransferError("schema", f"offer 'pack' lacks {', '.join(missing)}")

    def bad(what: str) -> TransferError:
        return TransferError("field", f"offer {what}")

    uid, mode, t = doc["update_id"], doc["mode"], doc["time"]
    if not (isinstance(uid, str) and _UPDATE_ID.fullmatch(uid)):
        raise bad(f"update_id {_short(uid)} is not 16 lower-case hex digits")
    if mode not in MODES:
        raise bad(f"mode {_short(mode)} is not one of {', '.join(MODES)}")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)):
        raise bad(f"time {_short(t)} is not a number")
    for key in ("name", "version"):
        v = pack[key]
        if not (isinstance(v, str) and 1 <= len(v) <= 64 and v.isprintable()):
            raise bad(f"pack.{key} {_short(v)} is not 1 to 64 printable characters")
    size, digest, chunk_size, chunks, hashes = pack["size"], pack["sha256"], doc["chunk_size"], doc["chunks"], doc["chunk_sha256"]
    if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise bad(f"pack.sha256 {_short(digest)} is not 64 lower-case hex digits")
    for key, v in (("pack.size", size), ("chunk_size", chunk_size), ("chunks", chunks)):
        if not (_is_int(v) and v > 0):
            raise bad(f"{key} {_short(v)} is not a positive integer")
    if size > max_pack_bytes:
        raise TransferError("oversize", f"pack of {size} bytes, at most {max_pack_bytes} ([updates] max_pack_mb)")
    if chunk_size > max_chunk_bytes:
        raise TransferError("oversize", f"chunk_size {chunk_size}, at most {max_chunk_bytes} ([updates] max_chunk_kb)")
    if chunks != -(-size // chunk_size):
        raise bad(f"chunks {chunks}, but {size} bytes in chunks of {chunk_size} make {-(-size // chunk_size)}")
    if not (isinstance(hashes, list) and len(hashes) == chunks):
        raise bad(f"chunk_sha256 is not a list of {chunks} hashes")
    for i, h in enumerate(hashes):
        if not (isinstance(h, str) and _SHA256.fullmatch(h)):
            raise bad(f"chunk_sha256[{i}] {_short(h)} is not 64 lower-case hex digits")
    return Offer(uid, mode, pack["name"], pack["version"], size, digest, chunk_size, chunks, tuple(hashes), float(t))


def parse_index(text: str) -> int:
    """A chunk index from a topic level (``{base}/model/chunk/{update_id}/{index}``): plain
    ASCII decimal, no sign or leading zero (``int()`` alone would take " 7", "+7", "٧")."""
    if not (isinstance(text, str) and _INDEX.fullmatch(text)):
        raise TransferError("field", f"chunk index {_short(text)} is not a decimal number")
    return int(text)


def new_update_id() -> str:
    return secrets.token_hex(8)


def make_offer(pack_bytes: bytes, update_id: str, mode: str, chunk_size: int, *,
               name: str | None = None, version: str | None = None, now: float | None = None) -> tuple[Offer, list[bytes]]:
    """The fleet side: an offer for ``pack_bytes`` and its chunks. ``name``/``version`` default
    to the pack's manifest (ValueError when the bytes are not a pack with one)."""
    if name is None or version is None:
        try:
            with zipfile.ZipFile(io.BytesIO(pack_bytes)) as z:
                manifest = json.loads(z.read("manifest.json"))
            name = manifest["name"] if name is None else name
            version = manifest["version"] if version is None else version
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"not a model pack with a manifest (name and version): {exc}") from None
    chunks = [pack_bytes[i:i + chunk_size] for i in range(0, len(pack_bytes), chunk_size)]
    offer = Offer(update_id, mode, str(name), str(version), len(pack_bytes), hashlib.sha256(pack_bytes).hexdigest(),
                  chunk_size, len(chunks), tuple(hashlib.sha256(c).hexdigest() for c in chunks),
                  float(_time.time() if now is None else now))
    parse_offer(offer.to_json(), sys.maxsize, sys.maxsize)  # the fleet never sends what a device refuses
    return offer, chunks


class TransferStore:
    """The update in progress and its verified chunks on disk (see the module docstring).

    Thread-safe (one lock): MQTT callbacks may call it from the network thread."""

    def __init__(self, updates_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(updates_dir)
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o750)
        self._lock = threading.RLock()
        self._offer: Offer | None = None
        self._have: set[int] = set()
        self._loaded = False

    # -- the update in progress -----------------------------------------------------------------
    def begin(self, offer: Offer) -> None:
        """Make ``offer`` the update in progress. The same update again (same id and content)
        resumes with the chunks held; any other update on disk is abandoned."""
        with self._lock:
            cur = self.current()
            if cur is not None and replace(cur, time=offer.time) == offer:
                return  # resume: keep the verified chunks
            for entry in list(self.dir.iterdir()):
                self._remove(entry)
            self._offer, self._have = None, set()
            tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))
            os.chmod(tmp, 0o750)
            write_atomic(tmp / OFFER_FILE, offer.to_json())
            os.rename(tmp, self.dir / offer.update_id)  # an update dir always holds its offer
            fsync_dir(self.dir)
            self._offer = offer
            log.info("update %s: %s %s, %d bytes in %d chunks (%s)", offer.update_id, offer.pack_name,
                     offer.pack_version, offer.size, offer.chunks, offer.mode)

    def current(self) -> Offer | None:
        """The update in progress, read back from disk at the first call (its chunks re-verified:
        a chunk file that no longer matches its hash is dropped and becomes missing again)."""
        with self._lock:
            if not self._loaded:
                self._loaded = True
                self._load()
            return self._offer

    def _load(self) -> None:
        found: list[tuple[float, Path, Offer]] = []
        for entry in sorted(self.dir.iterdir()):
            if not (entry.is_dir() and not entry.is_symlink() and _UPDATE_ID.fullmatch(entry.name)):
                self._remove(entry)  # temp dirs of an interrupted begin, strays
                continue
            try:
                offer = parse_offer((entry / OFFER_FILE).read_bytes(), sys.maxsize, sys.maxsize)
                if offer.update_id != entry.name:
                    raise TransferError("field", f"update_id {offer.update_id} in directory {entry.name}")
            except (OSError, TransferError) as exc:
                log.warning("update %s: %s unusable (%s); the update is dropped", entry.name, OFFER_FILE, exc)
                self._remove(entry)
                continue
            found.append(((entry / OFFER_FILE).stat().st_mtime, entry, offer))
        found.sort(key=lambda f: f[0])
        for _, entry, offer in found[:-1]:  # only one update is ever in progress; keep the newest
            log.warning("update %s: abandoned (a newer update is in progress)", offer.update_id)
            self._remove(entry)
        if not found:
            return
        _, entry, offer = found[-1]
        self._offer = offer
        for f in sorted(entry.iterdir()):
            m = _CHUNK_FILE.fullmatch(f.name)
            if f.name == OFFER_FILE:
                continue
            if m and int(m.group(1)) < offer.chunks and f.is_file() and not f.is_symlink():
                i = int(m.group(1))
                if f.stat().st_size == offer.chunk_length(i) and sha256_file(f) == offer.chunk_sha256[i]:
                    self._have.add(i)
                    continue
                log.warning("update %s: chunk %d on disk does not match its sha256; dropped, it will be asked for again",
                            offer.update_id, i)
            self._remove(f)  # bad chunks, temp files, an old candidate (assembled again on demand)
        log.info("update %s: resumed with %d of %d chunks", offer.update_id, len(self._have), offer.chunks)

    # -- chunks -----------------------------------------------------------------------------------
    def add_chunk(self, update_id: str, index: int, data: bytes) -> bool:
        """Store chunk ``index`` after checking it; True when new, False when already held
        (the held one is verified; a resend is ignored)."""
        with self._lock:
            offer = self.current()
            if offer is None or update_id != offer.update_id:
                raise TransferError("field", f"chunk for update {_short(update_id)}, which is not in progress")
            if not _is_int(index) or not 0 <= index < offer.chunks:
                raise TransferError("field", f"chunk index {_short(index)} is not below {offer.chunks}")
            if index in self._have:
                return False
            want = offer.chunk_length(index)
            if len(data) > want:
                raise TransferError("oversize", f"chunk {index} of {len(data)} bytes, expected {want}")
            if len(data) < want:
                raise TransferError("truncated", f"chunk {index} of {len(data)} bytes, expected {want}")
            if hashlib.sha256(data).hexdigest() != offer.chunk_sha256[index]:
                raise TransferError("chunk_hash", f"chunk {index}: sha256 differs from the offer's")
            write_atomic(self._update_dir() / f"{index}.chunk", data)
            self._have.add(index)
            return True

    def missing(self, limit: int = MAX_REQUEST_INDICES) -> list[int]:
        """The first ``limit`` chunk indices not held (for ``{base}/model/request``)."""
        with self._lock:
            offer = self.current()
            if offer is None:
                return []
            out = []
            for i in range(offer.chunks):
                if i not in self._have:
                    out.append(i)
                    if len(out) >= limit:
                        break
            return out

    def received(self) -> int:
        with self._lock:
            self.current()
            return len(self._have)

    def complete(self) -> bool:
        with self._lock:
            offer = self.current()
            return offer is not None and len(self._have) == offer.chunks

    # -- the pack ---------------------------------------------------------------------------------
    def assemble(self) -> bytes:
        """The whole pack, every chunk re-read and re-checked. ``truncated``: chunks missing;
        ``chunk_hash``: a chunk changed on disk (dropped: missing() lists it again);
        ``pack_hash``: the whole differs from the offer's sha256."""
        with self._lock:
            offer = self.current()
            if offer is None:
                raise TransferError("field", "no update in progress")
            lacking = self.missing(limit=8)
            if lacking:
                raise TransferError("truncated", f"{offer.chunks - len(self._have)} of {offer.chunks} chunks missing "
                                                 f"(first: {', '.join(map(str, lacking))})")
            parts = []
            for i in range(offer.chunks):
                f = self._update_dir() / f"{i}.chunk"
                try:
                    data = f.read_bytes()
                except OSError:
                    data = b""
                if hashlib.sha256(data).hexdigest() != offer.chunk_sha256[i]:
                    self._have.discard(i)
                    f.unlink(missing_ok=True)
                    raise TransferError("chunk_hash", f"chunk {i} on disk no longer matches its sha256 (dropped)")
                parts.append(data)
            pack = b"".join(parts)
            if len(pack) < offer.size:
                raise TransferError("truncated", f"assembled {len(pack)} bytes, the offer says {offer.size}")
            digest = hashlib.sha256(pack).hexdigest()
            if len(pack) != offer.size or digest != offer.sha256:
                raise TransferError("pack_hash", f"assembled pack has sha256 {digest[:16]}..., the offer says "
                                                 f"{offer.sha256[:16]}...")
            return pack

    def assemble_file(self) -> Path:
        """assemble(), written to ``<update_id>/candidate.pack`` (temp, fsync, rename)."""
        with self._lock:
            pack = self.assemble()
            path = self._update_dir() / CANDIDATE_FILE
            write_atomic(path, pack)
            return path

    def abandon(self) -> None:
        """Remove the update in progress (rejected, timed out, or superseded)."""
        with self._lock:
            offer = self.current()
            if offer is not None:
                self._remove(self._update_dir())
                fsync_dir(self.dir)
            self._offer, self._have = None, set()

    def finish(self) -> None:
        """The update ended (installed or rejected): its directory is removed."""
        self.abandon()

    # -- helpers ----------------------------------------------------------------------------------
    def _update_dir(self) -> Path:
        assert self._offer is not None
        return self.dir / self._offer.update_id

    def _remove(self, entry: Path) -> None:
        """Remove a file or a directory; a directory is first renamed away (atomic), so a crash
        mid-removal never leaves a half update under its own name."""
        if entry.is_dir() and not entry.is_symlink():
            trash = entry
            if not entry.name.startswith(".tmp-"):
                trash = self.dir / f".tmp-{entry.name}-{secrets.token_hex(4)}"
                os.rename(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


__all__ = ["TransferError", "Offer", "TransferStore", "parse_offer", "parse_index", "make_offer", "new_update_id"]
