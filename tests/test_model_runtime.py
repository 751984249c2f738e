"""The int8 runtime on a real TFLite model pack (tests/data/tiny.pack, made by
models/make_test_pack.py with TensorFlow's converter; its expected outputs come from
TensorFlow's own interpreter, so LiteRT is checked against an independent one)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.model_runtime import PackModel
from edge_agent.pack import PackError, read_pack, write_pack

TINY = Path(__file__).parent / "data" / "tiny.pack"


def _reference(pack):
    return dict(np.load(io.BytesIO(pack.members["reference.npz"])))


def _rewrite(tmp_path, manifest_edit=None, members_edit=None):
    pack = read_pack(TINY)
    manifest = {k: v for k, v in json.loads(pack.manifest_bytes).items() if k not in ("members", "schema")}
    members = dict(pack.members)
    if manifest_edit:
        manifest_edit(manifest)
    if members_edit:
        members_edit(members)
    p = tmp_path / "edited.pack"
    write_pack(p, manifest, members)
    return str(p)


def test_loads_passes_its_self_test_and_matches_the_reference():
    model = PackModel(str(TINY))
    assert model.backend.name == "ai_edge_litert"
    ref = _reference(model.pack)
    out = model.run(ref["features"])
    np.testing.assert_array_equal(out.probabilities, ref["out_probabilities"])
    np.testing.assert_array_equal(out.anomaly, ref["out_anomaly"][:, 0])
    assert out.top_labels()[0] in model.labels
    assert np.allclose(out.probabilities.sum(axis=1), 1.0, atol=0.02)  # softmax, dequantised


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 64])
def test_any_batch_size_gives_the_same_rows(rows):
    model = PackModel(str(TINY))
    feats = np.tile(_reference(model.pack)["features"], (5, 1))[:rows]
    together = model.run(feats)
    one_by_one = [model.run(f[None, :]) for f in feats]
    np.testing.assert_array_equal(together.probabilities, np.vstack([o.probabilities for o in one_by_one]))
    np.testing.assert_array_equal(together.anomaly, np.concatenate([o.anomaly for o in one_by_one]))


def test_not_a_tflite_flatbuffer_is_refused(tmp_path):
    p = _rewrite(tmp_path, members_edit=lambda m: m.__setitem__("model.tflite", b"TFL3" + b"\x00" * 64))
    with pytest.raises(PackError, match="model.tflite does not load"):
        PackModel(p)


@pytest.mark.parametrize("edit,reason", [
    (lambda m: m["tensors"]["input"].__setitem__("dtype", "float32"), "tensor input is int8, the manifest says float32"),
    (lambda m: m["tensors"]["input"].__setitem__("zero_point", 0), "tensor input quantisation"),
    (lambda m: m["tensors"]["probabilities"].__setitem__("name", "nope:0"), "tensors.probabilities names no output"),
    (lambda m: m["features"].__setitem__("names", m["features"]["names"][:-1]), "expected [batch, 7]"),
    (lambda m: m.__setitem__("labels", ["a", "b"]), "expected [batch, 2]"),
    (lambda m: m["tensors"]["input"].__setitem__("shape", [-1, 9]), "tensor input has shape [batch, 8], the manifest says [-1, 9]"),
    (lambda m: m["tensors"]["anomaly"].__setitem__("shape", 1), "the manifest says 1"),
])
def test_tensors_not_matching_the_manifest_are_refused(tmp_path, edit, reason):
    def both(m):
        edit(m)
        n = len(m["features"]["names"])
        norm = m["features"]["normalisation"]
        for k in ("log", "mean", "std"):
            norm[k] = norm[k][:n]
    with pytest.raises(PackError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        PackModel(_rewrite(tmp_path, manifest_edit=both))


def test_failing_reference_vectors_are_refused(tmp_path):
    def wrong_expectation(members):
        ref = _reference(read_pack(TINY))
        ref["out_probabilities"] = ref["out_probabilities"][::-1].copy()  # rows swapped: wrong answers
        buf = io.BytesIO()
        np.savez(buf, **ref)
        members["reference.npz"] = buf.getvalue()
    with pytest.raises(PackError, match="self-test failed: probabilities differs"):
        PackModel(_rewrite(tmp_path, members_edit=wrong_expectation))


def test_malformed_normalisation_is_refused(tmp_path):
    p = _rewrite(tmp_path, manifest_edit=lambda m: m["features"]["normalisation"].__setitem__("std", [0.0] * 8))
    with pytest.raises(PackError, match="std > 0"):
        PackModel(p)
