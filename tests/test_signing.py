"""Keys and pack signatures (edge_agent/signing.py, docs/UPDATES.md "Keys and signatures"):
a signed, intact pack verifies; every other case is refused with its reason; the CLI gives
one line and exit 2 for each failure (the contract's ``model verify``)."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from edge_agent.pack import MANIFEST, SIGNATURE, PackError, read_pack
from edge_agent.signing import (
    KeyFileError, SignatureError, key_id, keygen, load_private_key, load_public_key, load_trusted_keys,
    sign_pack, verify_pack_file, verify_pack_signature,
)
from cli_helpers import run_cli

DEFAULT_PACK = Path(__file__).resolve().parent.parent / "models" / "default.pack"


@pytest.fixture
def pack(tmp_path) -> Path:
    p = tmp_path / "x.pack"
    p.write_bytes(DEFAULT_PACK.read_bytes())
    return p


@pytest.fixture
def ops(tmp_path) -> tuple[Path, Path]:
    return keygen(tmp_path / "ops")


def _trusted(*pubs: Path) -> dict:
    return load_trusted_keys(pubs).keys


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _rezip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _reason(path: Path, trusted: dict) -> str:
    with pytest.raises(SignatureError) as e:
        verify_pack_file(path, trusted)
    assert "\n" not in str(e.value) and str(e.value).startswith(e.value.reason + ": ")
    return e.value.reason


# -- keys ---------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_0600_and_a_public_key_0644(tmp_path):
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        key_path, pub_path = keygen(tmp_path / "ops")
    finally:
        os.umask(old)
    assert (key_path, pub_path) == (tmp_path / "ops.key", tmp_path / "ops.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    assert key_id(load_private_key(key_path).public_key()) == key_id(load_public_key(pub_path))


@pytest.mark.parametrize("existing", ["ops.key", "ops.pub"])
def test_keygen_never_overwrites_either_file(tmp_path, existing):
    (tmp_path / existing).write_text("precious")
    with pytest.raises(KeyFileError, match="exists; refusing to overwrite"):
        keygen(tmp_path / "ops")
    assert (tmp_path / existing).read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # no half pair left


def test_key_id_is_16_hex_of_sha256_of_the_raw_public_key_and_stable(ops):
    pub = load_public_key(ops[1])
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key_id(pub) == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(load_public_key(ops[1])) == key_id(load_private_key(ops[0]).public_key()) == key_id(pub)


def test_two_keygens_give_two_key_ids(tmp_path):
    a, b = keygen(tmp_path / "a"), keygen(tmp_path / "b")
    assert key_id(load_public_key(a[1])) != key_id(load_public_key(b[1]))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_private_key_others_can_access_is_refused(ops, mode):
    os.chmod(ops[0], mode)
    with pytest.raises(KeyFileError) as e:
        load_private_key(ops[0])
    assert f"chmod 600 {ops[0]}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_a_garbage_private_key_is_refused(tmp_path, content):
    p = tmp_path / "bad.key"
    p.write_bytes(content)
    os.chmod(p, 0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        load_private_key(p)


def test_a_non_ed25519_key_is_refused(tmp_path):
    ec = generate_private_key(SECP256R1())
    k, pub = tmp_path / "ec.key", tmp_path / "ec.pub"
    k.write_bytes(ec.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(k, 0o600)
    pub.write_bytes(ec.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError, match="not Ed25519"):
        load_private_key(k)
    with pytest.raises(KeyFileError, match="not Ed25519"):
        load_public_key(pub)


def test_an_encrypted_private_key_is_refused_with_a_clear_message(tmp_path, ops):
    key = load_private_key(ops[0])
    p = tmp_path / "enc.key"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"pw")))
    os.chmod(p, 0o600)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(p)


def test_a_private_key_given_as_a_public_key_is_refused(ops):
    with pytest.raises(KeyFileError, match="a private key; trust the public key"):
        load_public_key(ops[0])


def test_trusted_keys_from_a_directory_skip_bad_files_and_report_them(tmp_path, caplog):
    d = tmp_path / "trusted"
    d.mkdir()
    a, b = keygen(d / "a"), keygen(d / "b")
    (d / "junk.pub").write_text("not a key")
    (d / "notes.txt").write_text("ignored: not *.pub")
    found = load_trusted_keys(d)
    assert set(found.keys) == {key_id(load_public_key(a[1])), key_id(load_public_key(b[1]))}
    assert len(found.problems) == 1 and "junk.pub" in found.problems[0]
    assert "junk.pub" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_trusted_keys(empty) == ({}, [f"{empty}: no *.pub file in this directory"])
    assert load_trusted_keys([tmp_path / "missing.pub"]).problems[0].endswith("cannot read: No such file or directory")


# -- sign and verify --------------------------------------------------------------------

def test_sign_then_verify_round_trip(pack, ops):
    before = read_pack(pack)
    signed = sign_pack(pack, load_private_key(ops[0]))
    kid = key_id(load_public_key(ops[1]))
    assert signed.signature["key_id"] == kid
    assert set(signed.signature) == {"schema", "algorithm", "key_id", "signature"}
    assert (signed.signature["schema"], signed.signature["algorithm"]) == (1, "ed25519")
    assert len(base64.b64decode(signed.signature["signature"], validate=True)) == 64
    # the pack's contents are untouched: same manifest bytes, same members
    assert signed.manifest_bytes == before.manifest_bytes and signed.members == before.members
    assert stat.S_IMODE(pack.stat().st_mode) == 0o644
    assert verify_pack_file(pack, _trusted(ops[1])).describe() == before.describe()
    assert verify_pack_signature(read_pack(pack), _trusted(ops[1])) == kid
    assert [p.name for p in pack.parent.iterdir() if p.name.endswith(".tmp")] == []  # atomic rewrite, no leftovers


def test_re_signing_replaces_the_signature(pack, ops, tmp_path):
    other = keygen(tmp_path / "other")
    sign_pack(pack, load_private_key(ops[0]))
    sign_pack(pack, load_private_key(other[0]))
    assert _reason(pack, _trusted(ops[1])) == "unknown_key"
    verify_pack_file(pack, _trusted(ops[1], other[1]))


def test_a_damaged_pack_is_refused_not_signed(pack, ops):
    entries = _entries(pack)
    entries["model.tflite"] = entries["model.tflite"] + b"\0"
    _rezip(pack, entries)
    before = pack.read_bytes()
    with pytest.raises(PackError, match="does not match its sha256"):
        sign_pack(pack, load_private_key(ops[0]))
    assert pack.read_bytes() == before


def test_unsigned(pack, ops):
    assert _reason(pack, _trusted(ops[1])) == "unsigned"


def test_signed_by_another_key(pack, ops, tmp_path):
    other = keygen(tmp_path / "other")
    sign_pack(pack, load_private_key(other[0]))
    assert _reason(pack, _trusted(ops[1])) == "unknown_key"
    assert _reason(pack, {}) == "unknown_key"


def test_altered_byte_in_the_model_member(pack, ops):
    sign_pack(pack, load_private_key(ops[0]))
    entries = _entries(pack)
    model = bytearray(entries["model.tflite"])
    model[len(model) // 2] ^= 0x01
    entries["model.tflite"] = bytes(model)
    _rezip(pack, entries)
    assert _reason(pack, _trusted(ops[1])) == "manifest_hash"


def _flip_in_member(path: Path, member: str, at: int) -> None:
    """Flip one byte of ``member``'s compressed data, in place in the archive."""
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(member)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + at % info.compress_size] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("at", range(0, 4000, 97))
def test_altered_byte_in_the_file_is_never_accepted_nor_a_traceback(pack, ops, at):
    """A byte flipped in the model's compressed data: a CRC or deflate error, or a hash
    mismatch: always manifest_hash (before the zlib.error fix in read_pack, some escaped)."""
    sign_pack(pack, load_private_key(ops[0]))
    _flip_in_member(pack, "model.tflite", at)
    assert _reason(pack, _trusted(ops[1])) == "manifest_hash"


def test_manifest_altered_after_signing(pack, ops):
    sign_pack(pack, load_private_key(ops[0]))
    entries = _entries(pack)
    manifest = json.loads(entries[MANIFEST])
    manifest["thresholds"]["anomaly"] = manifest["thresholds"].get("anomaly", 1) * 100  # a sound manifest, not the signed one
    entries[MANIFEST] = json.dumps(manifest).encode()
    _rezip(pack, entries)
    read_pack(pack)  # still a well-formed pack: only the signature catches it
    assert _reason(pack, _trusted(ops[1])) == "bad_signature"


def test_member_listing_altered_with_its_hash_after_signing(pack, ops):
    """Swap the model and fix up its hash in the manifest: the hashes agree, the signature does not."""
    sign_pack(pack, load_private_key(ops[0]))
    entries = _entries(pack)
    manifest = json.loads(entries[MANIFEST])
    entries["model.tflite"] = entries["model.tflite"][:-1] + b"X"
    manifest["members"]["model.tflite"] = hashlib.sha256(entries["model.tflite"]).hexdigest()
    entries[MANIFEST] = json.dumps(manifest).encode()
    _rezip(pack, entries)
    assert _reason(pack, _trusted(ops[1])) == "bad_signature"


def _tamper_signature(path: Path, change) -> None:
    entries = _entries(path)
    doc = json.loads(entries[SIGNATURE])
    new = change(doc)
    entries[SIGNATURE] = new if isinstance(new, bytes) else json.dumps(doc if new is None else new).encode()
    _rezip(path, entries)


def _flip_sig_bit(doc):
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[10] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(sig)).decode()


@pytest.mark.parametrize("change,needle", [
    (_flip_sig_bit, "does not verify"),
    (lambda d: d.update(schema=2), "schema 2"),
    (lambda d: d.update(schema=True), "schema True"),
    (lambda d: d.pop("schema") and None, "schema None"),
    (lambda d: d.update(algorithm="rsa"), "algorithm 'rsa'"),
    (lambda d: d.update(signature="@@not base64@@"), "not valid base64"),
    (lambda d: d.update(signature=base64.b64encode(b"\0" * 32).decode()), "32 bytes"),
    (lambda d: d.update(signature=123), "not a base64 string"),
    (lambda d: d.update(key_id="OPS\x1b[31m"), "is not 16 lower-case hex digits"),
    (lambda d: [1, 2], "not a JSON object"),
    (lambda d: b"{not json", "is not JSON"),
])
def test_tampered_signature_json(pack, ops, change, needle):
    sign_pack(pack, load_private_key(ops[0]))
    _tamper_signature(pack, change)
    with pytest.raises(SignatureError) as e:
        verify_pack_file(pack, _trusted(ops[1]))
    assert e.value.reason == "bad_signature" and needle in e.value.message, e.value.message
    assert "\x1b" not in str(e.value)


def test_not_a_pack_is_reason_manifest(tmp_path, ops):
    p = tmp_path / "x.pack"
    p.write_bytes(b"\x7fELF" + b"\0" * 100)
    assert _reason(p, _trusted(ops[1])) == "manifest"
    assert _reason(tmp_path / "missing.pack", _trusted(ops[1])) == "manifest"


# -- the command line --------------------------------------------------------------------

def _one_line_error(r) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_cli_keygen(tmp_path):
    r = run_cli("fleet", "keygen", str(tmp_path / "ops"))
    assert r.returncode == 0, r.stderr
    key, pub = tmp_path / "ops.key", tmp_path / "ops.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kid = key_id(load_public_key(pub))
    assert str(key) in r.stdout and str(pub) in r.stdout and kid in r.stdout
    line = _one_line_error(run_cli("fleet", "keygen", str(tmp_path / "ops")))
    assert "exists; refusing to overwrite" in line
    assert key_id(load_public_key(pub)) == kid


def test_cli_sign_and_verify_contract(tmp_path, pack):
    ops, other = keygen(tmp_path / "ops"), keygen(tmp_path / "other")
    kid = key_id(load_public_key(ops[1]))

    assert "unsigned" in _one_line_error(run_cli("model", "verify", str(pack), "--trusted-key", str(ops[1])))

    r = run_cli("fleet", "sign", str(pack), "--key", str(ops[0]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{pack}: signed by {kid} (default {read_pack(pack).version})"

    r = run_cli("model", "verify", str(pack), "--trusted-key", str(ops[1]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{pack}: signed by {kid}, intact (default {read_pack(pack).version})"
    r = run_cli("model", "verify", str(pack), "--trusted-key", str(other[1]), "--trusted-key", str(ops[1]))
    assert r.returncode == 0, r.stderr
    r = run_cli("model", "verify", str(pack), "--trusted-key", str(tmp_path))  # a directory of *.pub
    assert r.returncode == 0, r.stderr

    line = _one_line_error(run_cli("model", "verify", str(pack), "--trusted-key", str(other[1])))
    assert line.startswith(f"edge-agent model verify: {pack}: unknown_key: signed by key {kid}")

    _flip_in_member(pack, "model.tflite", 1000)
    line = _one_line_error(run_cli("model", "verify", str(pack), "--trusted-key", str(ops[1])))
    assert f"{pack}: manifest_hash: " in line


def test_cli_verify_bad_signature(tmp_path, pack):
    ops = keygen(tmp_path / "ops")
    sign_pack(pack, load_private_key(ops[0]))
    _tamper_signature(pack, _flip_sig_bit)
    line = _one_line_error(run_cli("model", "verify", str(pack), "--trusted-key", str(ops[1])))
    assert f"{pack}: bad_signature: " in line


def test_cli_verify_without_a_trusted_key(pack):
    assert "no trusted key given" in _one_line_error(run_cli("model", "verify", str(pack)))


def test_cli_verify_with_unusable_trusted_keys(tmp_path, pack):
    ops = keygen(tmp_path / "ops")
    line = _one_line_error(run_cli("model", "verify", str(pack), "--trusted-key", str(ops[0])))
    assert "a private key; trust the public key" in line
    line = _one_line_error(run_cli("model", "verify", str(pack), "--trusted-key", str(tmp_path / "nope.pub")))
    assert "cannot read" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("model", "verify", str(pack), "--trusted-key", str(empty))
    assert r.returncode == 2 and "no usable trusted key" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr


def test_cli_sign_refuses_an_open_key_and_a_garbage_key(tmp_path, pack):
    ops = keygen(tmp_path / "ops")
    os.chmod(ops[0], 0o644)
    before = pack.read_bytes()
    assert f"chmod 600 {ops[0]}" in _one_line_error(run_cli("fleet", "sign", str(pack), "--key", str(ops[0])))
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello")
    os.chmod(garbage, 0o600)
    assert "not a PEM private key" in _one_line_error(run_cli("fleet", "sign", str(pack), "--key", str(garbage)))
    assert "cannot read" in _one_line_error(run_cli("fleet", "sign", str(pack), "--key", str(tmp_path / "nope.key")))
    assert pack.read_bytes() == before


def test_cli_sign_refuses_a_damaged_pack(tmp_path, pack):
    ops = keygen(tmp_path / "ops")
    _flip_in_member(pack, "model.tflite", 1000)
    assert "damaged" in _one_line_error(run_cli("fleet", "sign", str(pack), "--key", str(ops[0])))


def test_the_daemon_loads_trusted_keys_without_cryptography_until_it_verifies(tmp_path, ops, pack):
    """load_trusted_keys parses NAME.pub itself (RFC 8410 DER in PEM), so the daemon does not
    map cryptography (8-9 MB) before an update arrives; the key it makes verifies exactly as
    cryptography's own, and a PEM with text around it still loads."""
    import subprocess
    import sys

    sign_pack(pack, load_private_key(ops[0]))
    wrapped = tmp_path / "wrapped.pub"
    wrapped.write_bytes(b"ops key, made 2026-12-03\n" + ops[1].read_bytes() + b"trailing words\n")
    code = f"""
import sys
from edge_agent.signing import load_trusted_keys, key_id
from edge_agent.pack import read_pack
from edge_agent import agent, updater, pack_verify  # the daemon's imports
found = load_trusted_keys([{str(ops[1])!r}])
assert not found.problems and 'cryptography' not in sys.modules, sorted(m for m in sys.modules if 'crypt' in m)
from edge_agent.signing import verify_pack_signature
kid = verify_pack_signature(read_pack({str(pack)!r}), found.keys)
print(kid, 'cryptography' in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [key_id(load_public_key(ops[1])), "True"]
    both = load_trusted_keys([ops[1], wrapped], log_problems=False)
    assert not both.problems and list(both.keys) == [key_id(load_public_key(ops[1]))]
