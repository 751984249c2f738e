"""Verification of a candidate pack (edge_agent/pack_verify.py): each documented reason from a
real pack broken in that one way, and the documented order when several things are wrong."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import default_config
from edge_agent.pack import read_pack, write_pack
from edge_agent.pack_scorer import PackScorer
from edge_agent.pack_verify import UpdateRejected, verify_candidate
from edge_agent.signing import keygen, load_private_key, load_trusted_keys, sign_pack

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny.pack"
NAN = DATA / "nan_output.pack"  # models/make_nan_test_pack.py: a float32 model whose anomaly head emits NaN


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    ops_key, ops_pub = keygen(d / "ops")
    other_key, _ = keygen(d / "other")
    return {"ops": load_private_key(ops_key), "other": load_private_key(other_key),
            "trusted": load_trusted_keys(ops_pub).keys}


@pytest.fixture(scope="module")
def cfg():
    return default_config()


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _rezip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _build(tmp_path, key=None, source=TINY, manifest_edit=None, members_edit=None, name="cand.pack") -> Path:
    """``source`` rebuilt with edits (manifest hashes kept right), signed with ``key`` if given."""
    pack = read_pack(source)
    manifest = {k: v for k, v in json.loads(pack.manifest_bytes).items() if k not in ("members", "schema")}
    members = dict(pack.members)
    if manifest_edit:
        manifest_edit(manifest)
    if members_edit:
        members_edit(members)
    out = tmp_path / name
    write_pack(out, manifest, members)
    if key is not None:
        sign_pack(out, key)
    return out


def _reason(path, keys, cfg) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as e:
        verify_candidate(path, keys["trusted"], cfg)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"{e.value.reason}: ") and str(path) not in text
    return e.value


def test_a_sound_signed_pack_is_returned_loaded(tmp_path, keys, cfg):
    scorer = verify_candidate(_build(tmp_path, keys["ops"]), keys["trusted"], cfg)
    assert isinstance(scorer, PackScorer) and scorer.version == "tiny-test 0.1.0"
    assert scorer.pack.signature is not None


def _set_member(name, data):
    return lambda members: members.__setitem__(name, data)


def _ref_edit(fn):
    def edit(members):
        ref = dict(np.load(io.BytesIO(members["reference.npz"])))
        fn(ref)
        buf = io.BytesIO()
        np.savez(buf, **ref)
        members["reference.npz"] = buf.getvalue()
    return edit


def test_manifest_hash_a_member_altered_after_signing(tmp_path, keys, cfg):
    signed = _build(tmp_path, keys["ops"])
    entries = _entries(signed)
    entries["reference.npz"] = entries["reference.npz"][:-1] + bytes([entries["reference.npz"][-1] ^ 1])
    e = _reason(_rezip(tmp_path / "x.pack", entries), keys, cfg)
    assert e.reason == "manifest_hash" and "'reference.npz' does not match its sha256" in e.message
    entries = _entries(signed)
    entries["payload.sh"] = b"rm -rf /"
    assert _reason(_rezip(tmp_path / "y.pack", entries), keys, cfg).reason == "manifest_hash"


def test_manifest_not_a_pack_or_a_bad_manifest(tmp_path, keys, cfg):
    junk = tmp_path / "junk.pack"
    junk.write_bytes(b"MZ\x90\x00" * 100)
    assert _reason(junk, keys, cfg).reason == "manifest"
    entries = _entries(_build(tmp_path, keys["ops"]))
    m = json.loads(entries["manifest.json"])
    del m["labels"]
    entries["manifest.json"] = json.dumps(m).encode()
    e = _reason(_rezip(tmp_path / "m.pack", entries), keys, cfg)
    assert e.reason == "manifest" and "missing 'labels'" in e.message


def test_unsigned_unknown_key_bad_signature(tmp_path, keys, cfg):
    e = _reason(_build(tmp_path), keys, cfg)
    assert e.reason == "unsigned"
    e = _reason(_build(tmp_path, keys["other"]), keys, cfg)
    assert e.reason == "unknown_key" and "not trusted" in e.message
    # the manifest changed after signing (members still match it): the signature fails
    entries = _entries(_build(tmp_path, keys["ops"]))
    m = json.loads(entries["manifest.json"])
    m["thresholds"]["anomaly"] = 99.0
    entries["manifest.json"] = json.dumps(m, indent=1, sort_keys=True).encode()
    e = _reason(_rezip(tmp_path / "b.pack", entries), keys, cfg)
    assert e.reason == "bad_signature" and "does not verify" in e.message
    entries = _entries(_build(tmp_path, keys["ops"]))
    entries["signature.json"] = b"{torn"
    assert _reason(_rezip(tmp_path / "t.pack", entries), keys, cfg).reason == "bad_signature"


def test_no_trusted_key_at_all_refuses_every_pack(tmp_path, keys, cfg):
    with pytest.raises(UpdateRejected) as e:
        verify_candidate(_build(tmp_path, keys["ops"]), {}, cfg)
    assert e.value.reason == "unknown_key"


def test_not_tflite_without_the_identifier_or_when_the_interpreter_refuses_it(tmp_path, keys, cfg):
    e = _reason(_build(tmp_path, keys["ops"], members_edit=_set_member("model.tflite", b"\x7fELF" + b"\x00" * 200)),
                keys, cfg)
    assert e.reason == "not_tflite" and "identifier" in e.message
    # the identifier is there but the flatbuffer is garbage: the interpreter refuses it
    e = _reason(_build(tmp_path, keys["ops"], members_edit=_set_member("model.tflite", b"\x00" * 4 + b"TFL3" + b"\xff" * 200)),
                keys, cfg)
    assert e.reason == "not_tflite" and "does not load" in e.message
    tflite = read_pack(TINY).members["model.tflite"]  # cut short: its offsets point past the end
    e = _reason(_build(tmp_path, keys["ops"], members_edit=_set_member("model.tflite", tflite[: len(tflite) // 2])),
                keys, cfg)
    assert e.reason == "not_tflite"


@pytest.mark.parametrize("edit,words", [
    (lambda m: m["tensors"]["input"].__setitem__("dtype", "float32"), "tensor input is int8, the manifest says float32"),
    (lambda m: m["tensors"]["probabilities"].__setitem__("zero_point", 0), "tensor probabilities quantisation"),
    (lambda m: m["tensors"]["anomaly"].__setitem__("name", "nope:0"), "tensors.anomaly names no output"),
    (lambda m: m["tensors"]["input"].__setitem__("shape", [-1, 9]), "the manifest says [-1, 9]"),
    (lambda m: m.__setitem__("labels", ["normal", "fault"]), "expected [batch, 2]"),
])
def test_tensors_not_matching_the_manifest(tmp_path, keys, cfg, edit, words):
    e = _reason(_build(tmp_path, keys["ops"], manifest_edit=edit), keys, cfg)
    assert e.reason == "tensors" and words in e.message


def test_self_test_wrong_reference_outputs(tmp_path, keys, cfg):
    def shift(ref):
        ref["out_probabilities"] = ref["out_probabilities"] + 0.25
    e = _reason(_build(tmp_path, keys["ops"], members_edit=_ref_edit(shift)), keys, cfg)
    assert e.reason == "self_test" and "probabilities differs from the reference" in e.message
    e = _reason(_build(tmp_path, keys["ops"], members_edit=_ref_edit(lambda ref: ref.pop("out_anomaly"))), keys, cfg)
    assert e.reason == "self_test" and "out_anomaly" in e.message


def test_self_test_nan_output_from_a_real_model(tmp_path, keys, cfg):
    # the fixture is sound but for its NaN-emitting anomaly head (models/make_nan_test_pack.py)
    pack = read_pack(NAN)
    assert pack.manifest["tensors"]["anomaly"]["dtype"] == "float32"
    e = _reason(_build(tmp_path, keys["ops"], source=NAN), keys, cfg)
    assert e.reason == "self_test" and "NaN/Inf for anomaly" in e.message


def test_the_first_failure_in_the_documented_order_wins(tmp_path, keys, cfg):
    garbage = _set_member("model.tflite", b"no flatbuffer here")
    bad_tensor = lambda m: m["tensors"]["input"].__setitem__("dtype", "uint8")  # noqa: E731

    def bad_ref(ref):
        ref["out_anomaly"] = ref["out_anomaly"] + 5

    # unsigned beats not_tflite
    assert _reason(_build(tmp_path, None, members_edit=garbage), keys, cfg).reason == "unsigned"
    # unknown_key beats tensors and self_test
    p = _build(tmp_path, keys["other"], manifest_edit=bad_tensor, members_edit=_ref_edit(bad_ref))
    assert _reason(p, keys, cfg).reason == "unknown_key"
    # not_tflite beats tensors
    assert _reason(_build(tmp_path, keys["ops"], manifest_edit=bad_tensor, members_edit=garbage), keys, cfg).reason == "not_tflite"
    # tensors beats self_test
    p = _build(tmp_path, keys["ops"], manifest_edit=bad_tensor, members_edit=_ref_edit(bad_ref))
    assert _reason(p, keys, cfg).reason == "tensors"
    # manifest_hash beats the signature: an altered member in a pack signed by an unknown key
    entries = _entries(_build(tmp_path, keys["other"]))
    entries["model.tflite"] = b"changed"
    assert _reason(_rezip(tmp_path / "h.pack", entries), keys, cfg).reason == "manifest_hash"


def test_other_load_problems_are_manifest(tmp_path, keys, cfg):
    def unknown_feature(m):
        m["features"]["names"] = ["bogus_feature"] + m["features"]["names"][1:]
    e = _reason(_build(tmp_path, keys["ops"], manifest_edit=unknown_feature), keys, cfg)
    assert e.reason == "manifest" and "bogus_feature" in e.message

    def bad_fs_range(m):
        m["features"]["fs_range"] = ["a", "b"]  # an unexpected exception inside the loader
    e = _reason(_build(tmp_path, keys["ops"], manifest_edit=bad_fs_range), keys, cfg)
    assert e.reason == "manifest" and "cannot be loaded" in e.message
