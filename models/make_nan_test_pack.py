"""Build tests/data/nan_output.pack: a float32 model pack whose model emits NaN.

Why: the update verifier (edge_agent/pack_verify.py) must reject a pack whose reference
vectors give NaN/Inf (docs/UPDATES.md, reason ``self_test``). The int8 packs cannot show it
(a dequantised int8 output is always finite), so this is a real float32 TFLite model whose
``anomaly`` head computes ``sqrt(-1 - sum(x^2))``, a square root of a negative number, as a
broken build might: NaN for every input. Its ``probabilities`` head is a sound softmax, and
the pack is otherwise valid (tensors match the manifest, the reference probabilities come
from TensorFlow's interpreter), so NaN is the one thing wrong with it. Unsigned: tests sign
it with a key made in their tmp_path.

Run with the build extra (TensorFlow), from the repository root:

    .venv-build/bin/python models/make_nan_test_pack.py tests/data/nan_output.pack
"""
from __future__ import annotations

import datetime as dt
import io
import sys

import numpy as np
import tensorflow as tf

from edge_agent.pack import write_pack

LABELS = ["normal", "inner_race", "outer_race", "ball"]
NAMES = ["rms", "kurtosis", "crest", "env_bpfo_1", "env_bpfi_1", "env_bsf_2", "env_ftf_1", "velocity_rms_mm_s"]
SEED = 20261207


def main(out: str) -> int:
    tf.keras.utils.set_random_seed(SEED)
    inp = tf.keras.Input((len(NAMES),), name="features")
    probs = tf.keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")(inp)
    anomaly = tf.keras.layers.Lambda(lambda t: tf.sqrt(-1.0 - tf.reduce_sum(t * t, axis=1, keepdims=True)),
                                     name="anomaly")(inp)
    tflite = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, [probs, anomaly])).convert()

    interp = tf.lite.Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp_d = interp.get_input_details()[0]
    by_width = {int(d["shape"][1]): d for d in interp.get_output_details()}
    p_d, a_d = by_width[len(LABELS)], by_width[1]
    ref_x = np.random.default_rng(SEED).uniform(0.5, 2.0, (4, len(NAMES))).astype(np.float32)
    want_p = []
    for row in ref_x:
        interp.set_tensor(inp_d["index"], row[None, :])
        interp.invoke()
        want_p.append(interp.get_tensor(p_d["index"])[0].astype(np.float64))
        assert np.isnan(interp.get_tensor(a_d["index"])).all(), "the anomaly head should emit NaN"
    buf = io.BytesIO()
    # what a sound model would give: an anomaly score of 0 (this one gives NaN)
    np.savez(buf, features=ref_x, out_probabilities=np.array(want_p), out_anomaly=np.zeros((len(ref_x), 1)))

    def tensor(d):
        return {"name": d["name"], "dtype": "float32", "shape": [-1, int(d["shape"][1])]}

    manifest = {
        "name": "nan-test",
        "version": "0.1.0",
        "created": dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc).isoformat(),
        "labels": LABELS,
        "features": {
            "names": NAMES,
            "window_length": 4096,
            "hop": 2048,
            "normalisation": {"log": [False] * len(NAMES), "mean": [0.0] * len(NAMES), "std": [1.0] * len(NAMES)},
        },
        "tensors": {"input": tensor(inp_d), "probabilities": tensor(p_d), "anomaly": tensor(a_d)},
        "thresholds": {"anomaly": 3.0, "label_confidence": 0.6},
        "drift_profile": {},
    }
    write_pack(out, manifest, {"model.tflite": tflite, "reference.npz": buf.getvalue()})
    print(f"wrote {out}: {len(tflite)} bytes of TFLite")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/nan_output.pack"))
