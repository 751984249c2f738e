"""Model packs: a sound pack reads back whole; every kind of damage is refused with its reason."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_agent.pack import MANIFEST, PackError, add_signature, read_pack, sha256, write_pack

TINY = Path(__file__).parent / "data" / "tiny.pack"


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _rezip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def test_the_tiny_pack_reads_back_with_its_manifest():
    pack = read_pack(TINY)
    assert pack.describe() == "tiny-test 0.1.0"
    assert set(pack.members) == {"model.tflite", "reference.npz"}
    assert pack.manifest["members"]["model.tflite"] == sha256(pack.members["model.tflite"])
    assert pack.signature is None
    assert pack.manifest["labels"] == ["normal", "inner_race", "outer_race", "ball"]


def test_write_then_read_round_trip_is_byte_identical(tmp_path):
    pack = read_pack(TINY)
    manifest = {k: v for k, v in pack.manifest.items() if k not in ("members", "schema")}
    a, b = tmp_path / "a.pack", tmp_path / "b.pack"
    write_pack(a, manifest, pack.members)
    write_pack(b, manifest, pack.members)
    assert a.read_bytes() == b.read_bytes()  # reproducible: fixed member times, sorted keys
    assert read_pack(a).members == pack.members
    assert oct(a.stat().st_mode & 0o777) == "0o644"


def test_signature_member_is_kept_apart(tmp_path):
    p = tmp_path / "s.pack"
    p.write_bytes(TINY.read_bytes())
    add_signature(p, {"key_id": "ops", "ed25519": "00" * 64})
    pack = read_pack(p)
    assert pack.signature == {"key_id": "ops", "ed25519": "00" * 64}
    assert set(pack.members) == {"model.tflite", "reference.npz"}


def _damaged(tmp_path, how):
    p = tmp_path / "bad.pack"
    entries = _entries(TINY)
    if how == "altered member":
        ref = dict(np.load(io.BytesIO(entries["reference.npz"])))
        ref["features"] = ref["features"] + 1
        buf = io.BytesIO()
        np.savez(buf, **ref)
        entries["reference.npz"] = buf.getvalue()
        _rezip(p, entries)
    elif how == "extra member":
        entries["run_me.sh"] = b"rm -rf /"
        _rezip(p, entries)
    elif how == "missing member":
        del entries["model.tflite"]
        _rezip(p, entries)
    elif how == "no manifest":
        del entries[MANIFEST]
        _rezip(p, entries)
    elif how == "manifest not json":
        entries[MANIFEST] = b"{not json"
        _rezip(p, entries)
    elif how == "manifest missing key":
        m = json.loads(entries[MANIFEST])
        del m["labels"]
        entries[MANIFEST] = json.dumps(m).encode()
        _rezip(p, entries)
    elif how == "future schema":
        m = json.loads(entries[MANIFEST])
        m["schema"] = 99
        entries[MANIFEST] = json.dumps(m).encode()
        _rezip(p, entries)
    elif how == "truncated":
        p.write_bytes(TINY.read_bytes()[: len(TINY.read_bytes()) // 2])
    elif how == "not a zip":
        p.write_bytes(b"\x7fELF" + b"\x00" * 100)
    elif how == "flipped byte":
        data = bytearray(TINY.read_bytes())
        data[len(data) // 3] ^= 0x40
        p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("how,reason", [
    ("altered member", "does not match its sha256"),
    ("extra member", "not listed in the manifest"),
    ("missing member", "listed in the manifest is missing"),
    ("no manifest", "no manifest.json"),
    ("manifest not json", "is not JSON"),
    ("manifest missing key", "missing 'labels'"),
    ("future schema", "pack schema 99"),
    ("truncated", "not a ZIP archive"),
    ("not a zip", "not a ZIP archive"),
    ("flipped byte", ""),  # lands in compressed data or a header: damaged, sha256 or not-a-ZIP
])
def test_every_kind_of_damage_is_refused_with_its_reason(tmp_path, how, reason):
    with pytest.raises(PackError) as e:
        read_pack(_damaged(tmp_path, how))
    msg = str(e.value)
    assert reason in msg and "\n" not in msg
    if how == "flipped byte":
        assert any(r in msg for r in ("damaged", "sha256", "not a ZIP", "not JSON", "missing"))


def test_missing_file(tmp_path):
    with pytest.raises(PackError, match="cannot read"):
        read_pack(tmp_path / "nope.pack")
