"""Ed25519 keys and pack signatures (docs/UPDATES.md, "Keys and signatures").

Why: a gateway runs whatever model pack it is given, so it must know that a pack comes from
the fleet's operators and that no byte of it changed on the way. The pack's manifest lists
the sha256 of every other member, so one Ed25519 signature over the exact bytes of
``manifest.json`` covers the whole pack; ``signature.json`` carries it beside the manifest.

Keys are plain files: ``NAME.key`` (PKCS#8 PEM, unencrypted, mode 0600, never overwritten;
its file mode is its protection, so a key readable by others is refused) and ``NAME.pub``
(SubjectPublicKeyInfo PEM). A key is named by its **key id**, the first 16 hex digits of the
sha256 of the raw 32-byte public key.

``cryptography`` is imported only where a key is made, a pack signed, or a signature checked:
the daemon loads its trusted keys with a plain PEM parse (:class:`TrustedKey`), so the 8-9 MB
the library maps stay out of its memory until the first update arrives (issue #9 footprint).

Failures are one-line exceptions: :class:`KeyFileError` for key files, :class:`SignatureError`
(with ``reason``, one of :data:`REASONS`) for a pack that does not verify.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Union

from edge_agent.pack import MANIFEST, SIGNATURE, Pack, PackError, add_signature, read_pack

log = logging.getLogger(__name__)

SIGNATURE_SCHEMA = 1
ALGORITHM = "ed25519"
REASONS = ("unsigned", "unknown_key", "bad_signature", "manifest_hash", "manifest")
MAX_KEY_FILE_BYTES = 16 * 1024
_KEY_ID = re.compile(r"[0-9a-f]{16}")
# An Ed25519 SubjectPublicKeyInfo in DER is this 12-byte header (SEQUENCE, AlgorithmIdentifier
# with OID 1.3.101.112, BIT STRING of 33 bytes) and the 32-byte key (RFC 8410, section 4).
_ED25519_SPKI_HEADER = bytes.fromhex("302a300506032b6570032100")
_PEM_PUBLIC = re.compile(rb"\A\s*-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----\s*\Z")

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class KeyFileError(ValueError):
    """A key file cannot be created or used; the message says why, in one line."""


class SignatureError(ValueError):
    """A pack does not verify. ``reason``: one of :data:`REASONS`; ``message``: one line."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class TrustedKey:
    """A trusted Ed25519 public key as its 32 raw bytes; ``cryptography`` is loaded at the
    first :meth:`verify`."""

    __slots__ = ("raw", "_key")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = bytes(raw)
        self._key: Ed25519PublicKey | None = None

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raises cryptography's InvalidSignature when ``signature`` is not over ``data``."""
        if self._key is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            self._key = Ed25519PublicKey.from_public_bytes(self.raw)
        self._key.verify(signature, data)


PublicKey = Union["Ed25519PublicKey", TrustedKey]


class TrustedKeys(NamedTuple):
    keys: dict[str, PublicKey]  # key id -> key
    problems: list[str]  # one line per file skipped


def _raw(public_key: PublicKey) -> bytes:
    if isinstance(public_key, TrustedKey):
        return public_key.raw
    from cryptography.hazmat.primitives import serialization
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: PublicKey) -> str:
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def keygen(name_path_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub`` (0644); refuse if either exists."""
    prefix = os.fspath(name_path_prefix)
    key_path, pub_path = Path(prefix + ".key"), Path(prefix + ".pub")
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            raise KeyFileError(f"{p} exists; refusing to overwrite a key (choose another NAME or move it away)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    _create(key_path, key_pem, 0o600)
    try:
        _create(pub_path, pub_pem, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)  # no half pair left behind
        raise
    return key_path, pub_path


def _create(path: Path, data: bytes, mode: int) -> None:
    """Create a new file with ``mode`` from the start (O_EXCL: never an existing file)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key (choose another NAME or move it away)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exactly mode, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot write: {exc.strerror}") from None


def _read_key_file(path: Path, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO cannot hang us
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # of the file opened, not of whatever the name points at now
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: not a key file (a regular file of at most {MAX_KEY_FILE_BYTES} bytes)")
        if private and st.st_mode & 0o077:
            raise KeyFileError(f"{path}: private key is accessible by group/others (mode {st.st_mode & 0o777:04o}); "
                               f"run: chmod 600 {path}")
        return f.read(MAX_KEY_FILE_BYTES + 1)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    data = _read_key_file(p, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{p}: the private key is encrypted; edge-agent uses unencrypted keys "
                           "protected by their file mode (edge-agent fleet keygen)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{p}: not a PEM private key (make one with: edge-agent fleet keygen NAME)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: a {type(key).__name__.lstrip('_')} key, not Ed25519 (edge-agent fleet keygen NAME)")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    p = Path(path)
    return _public_key_from_pem(p, _read_key_file(p, private=False))


def _public_key_from_pem(p: Path, data: bytes) -> Ed25519PublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{p}: a private key; trust the public key (NAME.pub) instead, and keep this one secret")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{p}: not a PEM public key (NAME.pub from edge-agent fleet keygen)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p}: a {type(key).__name__.lstrip('_')} key, not Ed25519")
    return key


def _trusted_key(path: Path) -> TrustedKey:
    """A ``NAME.pub`` as a :class:`TrustedKey` by a plain parse of its PEM (RFC 7468) and
    DER; a file that is not exactly that is handed to ``cryptography``."""
    data = _read_key_file(path, private=False)
    m = _PEM_PUBLIC.match(data)
    if m is not None:
        try:
            der = base64.b64decode(b"".join(m[1].split()), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        if len(der) == 44 and der.startswith(_ED25519_SPKI_HEADER):
            return TrustedKey(der[12:])
    # anything else: cryptography says what is wrong (KeyFileError), or reads a form of PEM
    # this parse does not (e.g. with explanatory text around it)
    return TrustedKey(_raw(_public_key_from_pem(path, data)))


def load_trusted_keys(sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                      log_problems: bool = True) -> TrustedKeys:
    """Public keys from files and directories (a directory: its ``*.pub``, not recursive).

    A file that cannot be used is skipped with one line in ``problems`` (and a logged
    warning unless ``log_problems`` is false: the CLI prints them itself); callers decide
    whether a problem is fatal. Never raises for a bad file."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    keys: dict[str, PublicKey] = {}
    problems: list[str] = []

    def skip(problem: str) -> None:
        if log_problems:
            log.warning("trusted keys: %s", problem)
        problems.append(problem)

    for source in sources:
        src = Path(source)
        if src.is_dir():
            files = sorted(p for p in src.glob("*.pub") if p.is_file())
            if not files:
                skip(f"{src}: no *.pub file in this directory")
        else:
            files = [src]
        for f in files:
            try:
                key = _trusted_key(f)
            except KeyFileError as exc:
                skip(f"skipped {exc}")
                continue
            keys[key_id(key)] = key
    if log_problems and problems and not keys:
        log.warning("no usable trusted key in %s", ", ".join(map(str, sources)))
    return TrustedKeys(keys, problems)


def trusted_from_arguments(sources: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
    """The operator's ``--trusted-key FILE|DIR`` (repeatable): a directory's bad ``*.pub`` is
    skipped with a line in ``problems``; a named file that cannot be used raises KeyFileError
    (the operator asked for that key)."""
    keys: dict[str, PublicKey] = {}
    problems: list[str] = []
    for source in sources:
        if Path(source).is_dir():
            found = load_trusted_keys(source, log_problems=False)
            keys.update(found.keys)
            problems += found.problems
            continue
        key = load_public_key(source)
        keys[key_id(key)] = key
    return TrustedKeys(keys, problems)


def sign_pack(path: str | os.PathLike[str], private_key: Ed25519PrivateKey) -> Pack:
    """Sign a pack in place (replacing any signature); return it as read back and verified.

    The pack is read and checked first, so a damaged pack is refused (PackError), never
    signed. The rewrite is atomic (pack.add_signature: temp file, fsync, rename)."""
    pack = read_pack(path)
    pub = private_key.public_key()
    kid = key_id(pub)
    signature = private_key.sign(pack.manifest_bytes)
    add_signature(path, {"schema": SIGNATURE_SCHEMA, "algorithm": ALGORITHM, "key_id": kid,
                         "signature": base64.b64encode(signature).decode("ascii")})
    signed = read_pack(path)
    try:
        verify_pack_signature(signed, {kid: pub})
    except SignatureError as exc:  # the file changed between the two reads
        raise PackError(f"{path}: the pack changed while it was being signed; sign it again ({exc})") from None
    return signed


def _short(value: object) -> str:
    text = repr(value)  # repr: no control characters from an untrusted file reach a terminal
    return text if len(text) <= 40 else text[:37] + "..."


def verify_pack_signature(pack: Pack, trusted: Mapping[str, PublicKey]) -> str:
    """Check ``pack``'s signature against ``trusted`` (key id -> key); return the key id.

    Raises SignatureError: ``unsigned``, ``unknown_key`` or ``bad_signature`` (which also
    covers a malformed ``signature.json``)."""
    doc = pack.signature
    if doc is None:
        raise SignatureError("unsigned", f"no {SIGNATURE} (sign it: edge-agent fleet sign PACK --key NAME.key)")

    def bad(what: str) -> SignatureError:
        return SignatureError("bad_signature", f"{SIGNATURE}: {what}")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if type(doc.get("schema")) is not int or doc["schema"] != SIGNATURE_SCHEMA:
        raise bad(f"schema {_short(doc.get('schema'))}, this agent reads {SIGNATURE_SCHEMA}")
    if doc.get("algorithm") != ALGORITHM:
        raise bad(f"algorithm {_short(doc.get('algorithm'))}, expected {ALGORITHM!r}")
    kid = doc.get("key_id")
    if not (isinstance(kid, str) and _KEY_ID.fullmatch(kid)):
        raise bad(f"key_id {_short(kid)} is not 16 lower-case hex digits")
    encoded = doc.get("signature")
    if not isinstance(encoded, str):
        raise bad(f"signature {_short(encoded)} is not a base64 string")
    try:
        sig = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad("signature is not valid base64") from None
    if len(sig) != 64:
        raise bad(f"signature is {len(sig)} bytes, an Ed25519 signature is 64")
    from cryptography.exceptions import InvalidSignature

    key = trusted.get(kid)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise SignatureError("unknown_key", f"signed by key {kid}, which is not trusted (trusted: {known})")
    try:
        key.verify(sig, pack.manifest_bytes)
    except InvalidSignature:
        raise SignatureError("bad_signature", f"the signature by key {kid} does not verify over {MANIFEST} "
                             "(the manifest changed after signing, or the signature was altered)") from None
    return kid


def verify_pack_file(path: str | os.PathLike[str], trusted: Mapping[str, PublicKey]) -> Pack:
    """Read, check and verify a pack file; return it. Every failure is a SignatureError whose
    message does not repeat the path: ``manifest_hash`` / ``manifest`` (from PackError),
    ``bad_signature`` for an unreadable ``signature.json``, or those of verify_pack_signature."""
    try:
        pack = read_pack(path)
    except PackError as exc:
        message, prefix = str(exc), f"{Path(path)}: "
        reason = getattr(exc, "reason", "manifest")
        raise SignatureError(reason if reason in REASONS else "manifest",
                             message[len(prefix):] if message.startswith(prefix) else message) from None
    verify_pack_signature(pack, trusted)
    return pack

