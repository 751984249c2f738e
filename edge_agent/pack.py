"""Model packs: one file, ``NAME.pack``, holding a model and all that is needed to trust and run it.

Why one self-describing file: the fleet ships whatever model it likes to thousands of
gateways; each gateway must know, from the file alone, how to feed the model (which
features, which window, how normalised), what its outputs mean, how to test it before use,
and that nothing in it changed since it was built and signed.

Format: a ZIP archive (stdlib ``zipfile``; members are read into memory, never extracted to
disk, so a member's name is never used as a path) with

* ``manifest.json`` — what the model is and how to use it (``MANIFEST_KEYS`` below), with
  ``members``: the sha256 of every other member except the signature;
* ``model.tflite`` — the TFLite flatbuffer;
* ``reference.npz`` — self-test vectors: ``features`` (n x F float32, raw feature vectors)
  and, for each model output, ``out_<name>`` (what the model must give for them);
* ``signature.json`` — optional until the fleet issue (#8) signs packs: an Ed25519 signature
  over the bytes of ``manifest.json``, which, listing every member's hash, covers them all.

Reading checks, in order: a readable ZIP of bounded size, the manifest's JSON and schema,
every listed member present with its hash, no unlisted member. Any failure is a
:class:`PackError` with one reason a person can act on.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACK_SCHEMA = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
MAX_PACK_BYTES = 64 * 1024 * 1024
MAX_MEMBER_BYTES = 32 * 1024 * 1024

# key: (type, what it is)
MANIFEST_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "schema": (int, "pack format version (1)"),
    "name": (str, "model name"),
    "version": (str, "model version, e.g. 2026.11.22-1"),
    "created": (str, "ISO 8601 UTC time of the build"),
    "labels": (list, "class labels, in the order of the classifier's output"),
    "features": (dict, "the feature pipeline: names, spec, window, rates, normalisation"),
    "tensors": (dict, "input and output tensors: name, shape, dtype, quantisation"),
    "thresholds": (dict, "alert thresholds: anomaly score, label confidence"),
    "drift_profile": (dict, "reference distribution of each feature: quantile edges, histograms"),
    "members": (dict, "sha256 of every member but the manifest and the signature"),
}


class PackError(ValueError):
    """The pack cannot be used; the message says why, in one line.

    ``reason`` (docs/UPDATES.md, verification reasons): ``manifest_hash`` when a member differs
    from the manifest (altered, damaged, missing or unlisted), ``bad_signature`` when
    ``signature.json`` is unreadable, else ``manifest``."""

    def __init__(self, message: str, reason: str = "manifest") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Pack:
    path: str
    manifest: dict[str, Any]
    members: dict[str, bytes]  # every member but the manifest and the signature
    manifest_bytes: bytes
    signature: dict[str, Any] | None

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pack(path: str | os.PathLike[str], manifest: dict[str, Any], members: dict[str, bytes]) -> bytes:
    """Write a pack atomically (temp file, fsync, rename); return the manifest bytes.

    ``manifest`` gets ``schema`` and ``members`` filled in; any signature is dropped (the
    contents changed, so it would no longer hold)."""
    if MANIFEST in members or SIGNATURE in members:
        raise ValueError(f"{MANIFEST} and {SIGNATURE} are written by write_pack, not given as members")
    manifest = dict(manifest, schema=PACK_SCHEMA, members={name: sha256(data) for name, data in sorted(members.items())})
    problems = manifest_problems(manifest)
    if problems:
        raise ValueError("manifest: " + "; ".join(problems))
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    _write_zip(Path(path), {MANIFEST: manifest_bytes, **members})
    return manifest_bytes


def _write_zip(path: Path, entries: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
                for name, data in entries.items():
                    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible bytes
                    info.compress_type = zipfile.ZIP_DEFLATED
                    z.writestr(info, data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # a pack is not a secret (mkstemp made it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_signature(path: str | os.PathLike[str], signature: dict[str, Any]) -> None:
    """Rewrite the pack with ``signature.json`` (the fleet issue computes it)."""
    pack = read_pack(path)
    _write_zip(Path(path), {MANIFEST: pack.manifest_bytes, **pack.members, SIGNATURE: json.dumps(signature).encode()})


def read_pack(path: str | os.PathLike[str]) -> Pack:
    """Read and check a pack; raise PackError with the reason when it cannot be used."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise PackError(f"{p}: cannot read: {exc.strerror}") from None
    if size > MAX_PACK_BYTES:
        raise PackError(f"{p}: {size} bytes, a pack is at most {MAX_PACK_BYTES}")
    try:
        data = p.read_bytes()
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackError(f"{p}: not a model pack (not a ZIP archive: {exc})") from None
    entries: dict[str, bytes] = {}
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise PackError(f"{p}: member {info.filename!r} is {info.file_size} bytes, at most {MAX_MEMBER_BYTES}")
        if info.filename in entries:
            raise PackError(f"{p}: member {info.filename!r} appears twice")
        try:
            entries[info.filename] = z.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, zlib.error) as exc:  # CRC, bad method, bad deflate data
            raise PackError(f"{p}: member {info.filename!r} is damaged: {exc}",
                            {MANIFEST: "manifest", SIGNATURE: "bad_signature"}.get(info.filename, "manifest_hash")) from None
    if MANIFEST not in entries:
        raise PackError(f"{p}: no {MANIFEST}: not a model pack")
    manifest_bytes = entries.pop(MANIFEST)
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackError(f"{p}: {MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise PackError(f"{p}: {MANIFEST} is not a JSON object")
    problems = manifest_problems(manifest)
    if problems:
        raise PackError(f"{p}: {MANIFEST}: " + "; ".join(problems))
    signature = None
    if SIGNATURE in entries:
        try:
            signature = json.loads(entries.pop(SIGNATURE))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PackError(f"{p}: {SIGNATURE} is not JSON: {exc}", "bad_signature") from None
    listed = manifest["members"]
    for name, digest in listed.items():
        if name not in entries:
            raise PackError(f"{p}: member {name!r} listed in the manifest is missing", "manifest_hash")
        if sha256(entries[name]) != digest:
            raise PackError(f"{p}: member {name!r} does not match its sha256 in the manifest (altered or corrupted)", "manifest_hash")
    extra = sorted(set(entries) - set(listed))
    if extra:
        raise PackError(f"{p}: member(s) {', '.join(map(repr, extra))} not listed in the manifest", "manifest_hash")
    return Pack(str(p), manifest, entries, manifest_bytes, signature)


def manifest_problems(m: dict[str, Any]) -> list[str]:
    """What is wrong with a manifest's shape (empty when it is sound)."""
    out = []
    for key, (kind, _) in MANIFEST_KEYS.items():
        if key not in m:
            out.append(f"missing {key!r}")
        elif not isinstance(m[key], kind) or isinstance(m[key], bool):
            out.append(f"{key!r} must be {getattr(kind, '__name__', kind)}")
    if out:
        return out
    if m["schema"] != PACK_SCHEMA:
        out.append(f"pack schema {m['schema']}, this agent reads {PACK_SCHEMA}")
    if not m["labels"] or not all(isinstance(x, str) for x in m["labels"]):
        out.append("'labels' must be a non-empty list of strings")
    for name, digest in m["members"].items():
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            out.append(f"members[{name!r}] is not a sha256 hex digest")
    if "model.tflite" not in m["members"]:
        out.append("no 'model.tflite' member listed")
    feats = m["features"]
    if not isinstance(feats.get("names"), list) or not feats.get("names"):
        out.append("'features.names' must be a non-empty list")
    return out
