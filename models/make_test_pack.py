"""Build tests/data/tiny.pack: a small int8 model pack for the runtime's tests.

Not a diagnostic model (that is models/build.py, issue #5): a two-layer network trained
for a few epochs on seeded synthetic feature vectors, so that the tests exercise a real
TFLite flatbuffer with real int8 quantisation, two named outputs and a manifest, without
TensorFlow at test time. Run with the build extra (TensorFlow), from the repository root:

    python models/make_test_pack.py tests/data/tiny.pack

The expected outputs of the reference vectors come from TensorFlow's own TFLite
interpreter, so the agent's runtime (LiteRT) is checked against an independent one.
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
LOG = [True, False, False, True, True, True, True, True]
SEED = 20261122


def synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors whose label is the family with the strongest envelope order."""
    y = rng.integers(0, 4, n)
    x = np.abs(rng.normal(1.0, 0.3, (n, len(NAMES)))) + 0.05
    x[:, 1] = 3.0 + rng.normal(0, 0.3, n)  # kurtosis
    for label, col in ((1, 4), (2, 3), (3, 5)):
        x[y == label, col] *= 8.0
        x[y == label, 1] += 4.0
    return x, y


def main(out: str) -> int:
    tf.keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x, y = synthetic(4000, rng)
    log = np.array(LOG)
    f = x.copy()
    f[:, log] = np.log(f[:, log])
    mean, std = f.mean(axis=0), f.std(axis=0)
    z = ((f - mean) / std).astype(np.float32)
    healthy = z[y == 0].mean(axis=0)

    inp = tf.keras.Input((len(NAMES),), name="features")
    h = tf.keras.layers.Dense(16, activation="relu")(inp)
    probs = tf.keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")(h)
    # anomaly: squared distance from the healthy centroid, scaled (a fixed, untrained layer)
    diff = tf.keras.layers.Lambda(lambda t: t - healthy, name="centre")(inp)
    anomaly = tf.keras.layers.Lambda(lambda t: tf.reduce_sum(t * t, axis=1, keepdims=True) / 10.0, name="anomaly")(diff)
    model = tf.keras.Model(inp, [probs, anomaly])
    model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", None])
    model.fit(z, y, epochs=8, batch_size=64, verbose=0)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([z[i : i + 1]] for i in range(0, 400))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tflite = conv.convert()

    interp = tf.lite.Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp_d = interp.get_input_details()[0]
    outs = interp.get_output_details()
    by_width = {int(d["shape"][1]): d for d in outs}
    p_d, a_d = by_width[len(LABELS)], by_width[1]

    def tensor(d):
        scale, zero = d["quantization"]
        return {"name": d["name"], "dtype": "int8", "shape": [-1, int(d["shape"][1])], "scale": float(scale), "zero_point": int(zero)}

    ref_x, _ = synthetic(16, np.random.default_rng(SEED + 1))
    rf = ref_x.copy()
    rf[:, log] = np.log(rf[:, log])
    rz = (rf - mean) / std
    s, zp = inp_d["quantization"]
    q = np.clip(np.round(rz / s) + zp, -128, 127).astype(np.int8)
    want_p, want_a = [], []
    for row in q:
        interp.set_tensor(inp_d["index"], row[None, :])
        interp.invoke()
        ps, pz = p_d["quantization"]
        as_, az = a_d["quantization"]
        want_p.append((interp.get_tensor(p_d["index"])[0].astype(np.float64) - pz) * ps)
        want_a.append((interp.get_tensor(a_d["index"])[0].astype(np.float64) - az) * as_)
    buf = io.BytesIO()
    np.savez(buf, features=ref_x.astype(np.float32), out_probabilities=np.array(want_p), out_anomaly=np.array(want_a))

    manifest = {
        "name": "tiny-test",
        "version": "0.1.0",
        "created": dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc).isoformat(),
        "labels": LABELS,
        "features": {
            "names": NAMES,
            "window_length": 4096,
            "hop": 2048,
            "fs_range": [10000.0, 50000.0],
            "channel_roles": ["accelerometer"],
            "normalisation": {"log": LOG, "mean": mean.tolist(), "std": std.tolist()},
        },
        "tensors": {"input": tensor(inp_d), "probabilities": tensor(p_d), "anomaly": tensor(a_d)},
        "thresholds": {"anomaly": 3.0, "label_confidence": 0.6},
        "drift_profile": {},
    }
    write_pack(out, manifest, {"model.tflite": tflite, "reference.npz": buf.getvalue()})
    print(f"wrote {out}: {len(tflite)} bytes of TFLite")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/tiny.pack"))
