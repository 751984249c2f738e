"""Build models/default.pack: the default bearing-diagnosis model (issue #5, part 3).

Run from the repository root with the build extra (TensorFlow) installed (`make model`):

    python models/build.py [--out models/default.pack] [--report models/REPORT.md] [--cwru DIR]

What it does, seeded and repeatable:

1. dataset: feature vectors (FeatureExtractor, FeatureSpec.default(), window 4096, each
   window's true shaft speed) from (a) the emulator (edge_agent/emulator/signal.py) at
   varied speeds, native rates 12 / 25.6 / 48 kHz, healthy / inner / outer / ball faults at
   random severities, noise levels and resonances, several seeds; (b) the real CWRU 0 hp
   records in ../shared/data/cwru when present, with a TIME split: first 70% of every
   record for training, last 30% for evaluation (the 48 kHz healthy record both natively
   and decimated to 12 kHz);
2. a small Keras MLP (class probabilities) plus a fixed anomaly head (clipped, scaled
   squared distance from the healthy centroid in normalised feature space);
3. full-integer int8 post-training quantisation with a representative dataset;
4. thresholds and a drift profile from the training data; reference vectors from TF's
   TFLite interpreter; models/default.pack via edge_agent.pack.write_pack;
5. validation (time split, leave-one-fault-size-out on CWRU, held-out emulator speeds),
   float vs int8 agreement, sizes; then the agent's runtime (.venv, models/check_pack.py)
   loads the pack, runs its self-test, and times it; models/REPORT.md is written.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.emulator.signal import SignalGenerator, SignalSpec  # noqa: E402
from edge_agent.features import FeatureExtractor, FeatureSpec  # noqa: E402
from edge_agent.drift import make_profile, psi_exact  # noqa: E402
from edge_agent.pack import write_pack  # noqa: E402
from edge_agent.window import Window  # noqa: E402

SEED = 20261122
VERSION = "2026.11.22-2"
LABELS = ["normal", "inner_race", "outer_race", "ball"]
WINDOW = 4096
HOP = 2048
TRAIN_FRACTION = 0.7
# Experiment knobs (defaults = the shipped pack): BUILD_CWRU_WEIGHT, BUILD_L2, BUILD_DROPOUT, BUILD_NORMAL_WEIGHT.
# Inputs: kurtosis and every order-tracked envelope SNR. No rms,
# peak, band_rms, velocity or centroid: their scale depends on sensor gain, mounting, load
# and rate, and differs by an order of magnitude between emulator and CWRU (REPORT.md).
NAMES = ["kurtosis", "crest", "shape", "impulse", "clearance",
         "env_bpfo_1", "env_bpfo_2", "env_bpfo_3", "env_bpfi_1", "env_bpfi_2", "env_bpfi_3",
         "env_bsf_1", "env_bsf_2", "env_bsf_3", "env_ftf_1", "env_ftf_2", "env_ftf_3",
         "env_bpfi_sb_lo", "env_bpfi_sb_hi", "env_bsf2_sb_lo", "env_bsf2_sb_hi"]
LOG = [True] * len(NAMES)  # all strictly positive, heavy right tails
EMU_SPEEDS_TRAIN = [600, 900, 1200, 1500, 2100, 2400, 3000]
EMU_SPEEDS_HELD = [1800, 2700]  # emulator speeds never seen in training (validation only)
EMU_RATES = [12000.0, 25600.0, 48000.0]
EMU_SEEDS = [1, 2, 3, 4]
# validation machines per (held-out speed, rate, label): 50, so 400 windows each and 2400 healthy
# windows in all. With two (96 healthy windows) one false call moved the healthy rate by 1%.
EMU_SEEDS_HELD = list(range(11, 61))
SEVERITY_BINS = [(0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, float("inf"))]  # impulse / noise RMS, REPORT's table
STREAM_WINDOWS = 40  # consecutive windows per held-out machine (~14 s) for the daemon's alert rule
EMU_WINDOWS = 8
ANOMALY_CLIP = 8.0  # anomaly output saturates here (in units of the healthy 99.9% quantile)
CWRU_WEIGHT = float(os.environ.get("BUILD_CWRU_WEIGHT", "1.0"))  # sample weight of real windows against emulated ones
L2 = float(os.environ.get("BUILD_L2", "1e-3"))
DROPOUT = float(os.environ.get("BUILD_DROPOUT", "0.1"))
# the normal class counts this much more than its share in the loss: a false call on a healthy
# machine costs a technician's trip, and the issue allows at most 2% of healthy windows called a fault
NORMAL_WEIGHT = float(os.environ.get("BUILD_NORMAL_WEIGHT", "2.0"))


def log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data
REFERENCE_FS = 12000.0  # WINDOW and HOP are the figures at this rate; they scale with the rate (windower.py)


def wlen(fs: float) -> int:
    """Window length at ``fs``: the same duration as WINDOW at REFERENCE_FS, as the agent's windower cuts it."""
    from edge_agent.windower import Windower
    return Windower(WINDOW, HOP, 1.0, REFERENCE_FS).length_at(fs)[0]


def win(x: np.ndarray, fs: float, rpm: float) -> Window:
    return Window("de", np.ascontiguousarray(x, dtype=np.float32), float(fs), float(rpm), 0, 0, len(x) - 1)


def emulator_windows(speeds: list[int], seeds: list[int], tag: str, only: str | None = None,
                     n_windows: int = EMU_WINDOWS) -> tuple[list[Window], list[int], list[dict]]:
    """``n_windows`` consecutive windows of each emulated machine (speed, rate, seed, label;
    only the label ``only`` when given): a machine's first windows are the same whatever
    ``n_windows`` is."""
    windows, labels, meta = [], [], []
    for si, speed in enumerate(speeds):
        for fs in EMU_RATES:
            for seed in seeds:
                for ci, label in enumerate(LABELS):
                    if only is not None and label != only:
                        continue
                    scenario = "healthy" if label == "normal" else label
                    rng = np.random.default_rng([SEED, speed, int(fs), seed, ci])
                    res = float(rng.uniform(1800.0, min(6000.0, 0.4 * fs)))
                    spec = SignalSpec(fs=fs, rpm=float(speed), scenario=scenario, seed=int(rng.integers(1 << 30)),
                                      onset_s=0.0, ramp_s=1e-6, noise_g=float(rng.uniform(0.03, 0.12)),
                                      impulse_g=float(rng.uniform(0.15, 1.0)), resonance_hz=res,
                                      resonance_decay_s=float(rng.uniform(0.0003, 0.0008)))
                    gen = SignalGenerator(spec)
                    gen.next_block(int(fs * 0.05))  # past onset
                    for _ in range(n_windows):
                        x, rpm = gen.next_block(wlen(fs))
                        windows.append(win(shaft_modulate(x, fs, rpm, rng), fs, rpm))
                        labels.append(ci)
                        meta.append({"source": tag, "speed": speed, "fs": fs, "seed": seed,
                                     "severity": spec.impulse_g / spec.noise_g})
    return windows, labels, meta


def shaft_modulate(x: np.ndarray, fs: float, rpm: float, rng: np.random.Generator) -> np.ndarray:
    """Augmentation: amplitude modulation of the whole signal at the shaft rate, depth 0-0.6
    (half the windows unmodulated). Real machines have it from unbalance and runout, healthy
    or not (the CWRU healthy record's envelope has a clear 1x line); the emulator's signal
    has none. Without it a model learns "shaft-rate line in the envelope = inner-race fault"
    and outer-race lines' shaft sidebands (BPFO +- 1, which fall near 2xBSF and BPFI - 1 on
    this geometry) look like nothing it knows."""
    if rng.uniform() < 0.5:
        return x
    depth = rng.uniform(0.0, 0.6)
    t = np.arange(len(x)) / fs
    return (x * (1.0 + depth * np.sin(2 * np.pi * rpm / 60.0 * t + rng.uniform(0, 2 * np.pi)))).astype(np.float32)


DRIFT_PSI_DRIFT = 0.25  # edge_agent's default [drift] psi_drift


def drift_regimes() -> dict[str, tuple[float, float | None]]:
    """The agent's default operating regimes ([drift] speed_bins_rpm)."""
    from edge_agent.config import default_config
    from edge_agent.sketches import Regimes

    r = Regimes(default_config().drift.speed_bins_rpm)
    return {n: r.bounds(n) for n in r.names}


def _regime_speeds(lo: float, hi: float | None, n: int) -> list[float]:
    lo = max(lo, 300.0)
    hi = hi if hi is not None else lo * 1.3
    return [float(v) for v in np.linspace(lo, hi, n + 2)[1:-1]]


def _healthy_machine(speed: float, fs: float, rng: np.random.Generator, n_windows: int, feats) -> np.ndarray:
    """Feature rows of one emulated healthy machine: its own noise level, resonance and
    shaft-modulation depth, at one mean speed and rate."""
    spec = SignalSpec(fs=fs, rpm=speed, scenario="healthy", seed=int(rng.integers(1 << 30)),
                      noise_g=float(rng.uniform(0.03, 0.12)),
                      resonance_hz=float(rng.uniform(1800.0, min(6000.0, 0.4 * fs))))
    gen = SignalGenerator(spec)
    depth = float(rng.uniform(0.0, 0.6)) if rng.uniform() < 0.5 else 0.0
    ws = []
    for _ in range(n_windows):
        x, rpm = gen.next_block(wlen(fs))
        t = np.arange(len(x)) / fs
        ws.append(win(x * (1 + depth * np.sin(2 * np.pi * rpm / 60 * t + 0.7)), fs, rpm))
    return feats(ws), np.array([w.rpm for w in ws])


def drift_reference(feats) -> tuple[np.ndarray, np.ndarray]:
    """The drift reference's emulated healthy machines: in every default regime four speeds,
    three rates, two machines each, 20 windows per machine."""
    rows, rpms = [], []
    for name, (lo, hi) in drift_regimes().items():
        for speed in _regime_speeds(lo, hi, 4):
            for fs in EMU_RATES:
                for m in range(2):
                    rng = np.random.default_rng([SEED, 77, int(speed), int(fs), m])
                    f, r = _healthy_machine(speed, fs, rng, 20, feats)
                    rows.append(f)
                    rpms.append(r)
    return np.concatenate(rows), np.concatenate(rpms)


def drift_probe_machines(feats) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Emulated healthy machines never used for the reference (other speeds and seeds), 300
    windows each: (regime, feature rows, rpm). Judges which features' healthy distribution
    stays put from machine to machine."""
    out = []
    for name, (lo, hi) in drift_regimes().items():
        speed = _regime_speeds(lo, hi, 5)[2] * 1.01
        for fs in EMU_RATES:
            for m in range(2):
                rng = np.random.default_rng([SEED, 99, int(speed), int(fs), m])
                f, r = _healthy_machine(speed, fs, rng, 300, feats)
                out.append((name, f, r))
    return out


def evidence_windows(dirs: list[Path]) -> tuple[list[Window], list[int], dict[str, int]]:
    """Labelled windows from the technicians' verdicts (`edge-agent alerts export`: an
    index.csv of file, fs, rpm, label, verdict ... and one .npz per alert whose ``DE`` rows are
    the windows that raised it). A confirmed alert's windows carry its label, a false alarm's
    ``normal``; labels the model does not have (e.g. ``anomaly``, ``drift``) and unreadable
    files are skipped and counted."""
    windows, labels, skipped = [], [], {}
    for d in dirs:
        with open(d / "index.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            label = row.get("label", "")
            if label not in LABELS:
                skipped[f"label {label!r}"] = skipped.get(f"label {label!r}", 0) + 1
                continue
            try:
                with np.load(d / Path(row["file"]).name) as z:
                    de = np.atleast_2d(np.asarray(z["DE"], dtype=np.float32))
                fs = float(row["fs"])
                rpm = float(row["rpm"]) if row.get("rpm") not in (None, "", "None", "nan") else float("nan")
            except (OSError, KeyError, ValueError) as exc:
                skipped[type(exc).__name__] = skipped.get(type(exc).__name__, 0) + 1
                continue
            if not (np.isfinite(rpm) and rpm > 0 and fs > 0):
                skipped["no speed"] = skipped.get("no speed", 0) + 1
                continue
            for x in de:
                windows.append(win(x, fs, rpm))
                labels.append(LABELS.index(label))
    return windows, labels, skipped


def lowpass_decimate(x: np.ndarray, q: int) -> np.ndarray:
    """Windowed-sinc FIR (cut-off 0.8 of the new Nyquist, 255 taps, Blackman), then every q-th sample."""
    taps = 255
    n = np.arange(taps) - (taps - 1) / 2
    fc = 0.8 * 0.5 / q
    h = 2 * fc * np.sinc(2 * fc * n) * np.blackman(taps)
    h /= h.sum()
    return np.convolve(x.astype(np.float64), h, mode="same")[::q]


def cut(x: np.ndarray, hop: int, n: int = WINDOW) -> list[np.ndarray]:
    return [x[s : s + n] for s in range(0, len(x) - n + 1, hop)]


def cwru_data(cwru: Path) -> dict[str, dict]:
    """Per record: label, size, train and eval windows (time split 70 / 30)."""
    out = {}
    with open(cwru / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        d = np.load(cwru / row["file"])
        x = d["DE"].astype(np.float64)
        fs, rpm = float(row["fs"]), float(row["rpm"])
        split = int(len(x) * TRAIN_FRACTION)
        parts = {"train": x[:split], "eval": x[split:]}
        for part, seg in parts.items():
            n = wlen(fs)
            # the healthy record is 2.5 s long: its windows overlap more (inside each part only)
            ws = [win(w, fs, rpm) for w in cut(seg, n // 2 if fs == REFERENCE_FS else n // 8, n)]
            if fs == 48000.0:  # the healthy record: natively at 48 kHz and decimated to 12 kHz
                ws += [win(w, 12000.0, rpm) for w in cut(lowpass_decimate(seg, 4), 1024)]
            out.setdefault(row["file"], {"label": LABELS.index(row["label"]), "size": int(row["fault_diameter_mils"]),
                                         "fs": fs})[part] = ws
    return out


# ----------------------------------------------------------------------------- model
def normalise(f: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    g = np.log(np.maximum(f, 1e-12))
    return (g - mean) / std


def make_model(tf, n_in: int, centre: np.ndarray, spread: np.ndarray, scale: float):
    inp = tf.keras.Input((n_in,), name="features")
    reg = tf.keras.regularizers.l2(L2) if L2 > 0 else None
    h = tf.keras.layers.Dense(32, activation="relu", kernel_regularizer=reg)(inp)
    if DROPOUT > 0:
        h = tf.keras.layers.Dropout(DROPOUT)(h)
    h = tf.keras.layers.Dense(16, activation="relu", kernel_regularizer=reg)(h)
    probs = tf.keras.layers.Dense(len(LABELS), activation="softmax", name="probabilities")(h)
    c = centre.astype(np.float32)
    s = (1.0 / spread).astype(np.float32)
    # anomaly: mean squared distance from the healthy centroid, in healthy-spread units, each
    # coordinate clipped to +-4 (one wild feature cannot dominate; keeps int8 ranges tight),
    # divided by the healthy training windows' 99.9% quantile, saturating at ANOMALY_CLIP.
    diff = tf.keras.layers.Lambda(lambda t: tf.clip_by_value((t - c) * s, -4.0, 4.0), name="centre")(inp)
    anomaly = tf.keras.layers.Lambda(
        lambda t: tf.minimum(tf.reduce_mean(t * t, axis=1, keepdims=True) / scale, ANOMALY_CLIP), name="anomaly")(diff)
    return tf.keras.Model(inp, [probs, anomaly])


def anomaly_np(z: np.ndarray, centre: np.ndarray, spread: np.ndarray, scale: float) -> np.ndarray:
    d = np.clip((z - centre) / spread, -4, 4)
    return np.minimum(np.mean(d * d, axis=1) / scale, ANOMALY_CLIP)


def train(tf, z: np.ndarray, y: np.ndarray, w: np.ndarray, centre, spread, scale, seed: int):
    tf.keras.utils.set_random_seed(seed)
    model = make_model(tf, z.shape[1], centre, spread, scale)
    counts = np.bincount(y, weights=w, minlength=len(LABELS))
    cw = w * (counts.sum() / (len(LABELS) * counts[y])) * np.where(y == 0, NORMAL_WEIGHT, 1.0)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss=["sparse_categorical_crossentropy", None])
    model.fit(z, y, sample_weight=cw, epochs=60, batch_size=128, verbose=0, shuffle=True)
    return model


def convert(tf, model, rep: np.ndarray) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def convert_float(tf, model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


class Int8Runner:
    def __init__(self, tf, tflite: bytes) -> None:
        self.i = tf.lite.Interpreter(model_content=tflite)
        self.i.allocate_tensors()
        self.inp = self.i.get_input_details()[0]
        outs = self.i.get_output_details()
        by_width = {int(d["shape"][1]): d for d in outs}
        self.p, self.a = by_width[len(LABELS)], by_width[1]

    def run(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, zp = self.inp["quantization"]
        q = np.clip(np.round(z / s) + zp, -128, 127).astype(np.int8)
        self.i.resize_tensor_input(self.inp["index"], [len(q), q.shape[1]])
        self.i.allocate_tensors()
        self.i.set_tensor(self.inp["index"], q)
        self.i.invoke()
        ps, pz = self.p["quantization"]
        as_, az = self.a["quantization"]
        p = (self.i.get_tensor(self.p["index"]).astype(np.float64) - pz) * ps
        a = (self.i.get_tensor(self.a["index"]).astype(np.float64) - az) * as_
        return p, a[:, 0]


def weight_bytes(tf, tflite: bytes) -> dict[str, int]:
    """Bytes of the dense layers' constant tensors in a flatbuffer: ``kernels`` (the 2-D
    weight matrices) and ``biases`` (1-D; int32 in TFLite's int8 scheme, which keeps
    accumulator offsets at 32 bits: TFLite 8-bit quantization spec)."""
    interp = tf.lite.Interpreter(model_content=tflite)
    out = {"kernels": 0, "biases": 0}
    for d in interp.get_tensor_details():
        name = d["name"].lower()
        if not ("dense" in name or "matmul" in name or "bias" in name or "probabilities" in name):
            continue
        try:
            arr = interp.get_tensor(d["index"])
        except ValueError:
            continue
        if arr.ndim == 2 and arr.size > 1:
            out["kernels"] += arr.nbytes
        elif arr.ndim == 1 and arr.size > 1 and arr.dtype in (np.int32, np.float32) and "bias" in name:
            out["biases"] += arr.nbytes
    return out


# ----------------------------------------------------------------------------- reporting helpers
def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    m = np.zeros((len(LABELS), len(LABELS)), dtype=int)
    for a, b in zip(y, pred):
        m[a, b] += 1
    return m


def md_confusion(m: np.ndarray) -> str:
    lines = ["| true \\ predicted | " + " | ".join(LABELS) + " | correct |", "|---|" + "---|" * (len(LABELS) + 1)]
    for i, lab in enumerate(LABELS):
        n = m[i].sum()
        acc = f"{100 * m[i, i] / n:.1f}%" if n else "-"
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in m[i]) + f" | {acc} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "models" / "default.pack"))
    ap.add_argument("--report", default=str(ROOT / "models" / "REPORT.md"))
    ap.add_argument("--cwru", default=str(ROOT.parent / "shared" / "data" / "cwru"))
    ap.add_argument("--runtime-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--evidence", action="append", default=[], metavar="DIR",
                    help="labelled evidence from `edge-agent alerts export` (index.csv + .npz); repeatable")
    args = ap.parse_args()

    import tensorflow as tf

    t0 = time.time()
    spec = FeatureSpec.default()
    fx = FeatureExtractor(spec)
    cols = [fx.names.index(n) for n in NAMES]

    def feats(ws: list[Window]) -> np.ndarray:
        return fx.extract(ws)[:, cols] if ws else np.empty((0, len(NAMES)))

    log(f"emulator: speeds {EMU_SPEEDS_TRAIN} rpm (held out {EMU_SPEEDS_HELD}), rates {EMU_RATES}, seeds {EMU_SEEDS}")
    ew, ey, _ = emulator_windows(EMU_SPEEDS_TRAIN, EMU_SEEDS, "emu")
    ex, ey = feats(ew), np.array(ey)
    hw, hy, hmeta = emulator_windows(EMU_SPEEDS_HELD, EMU_SEEDS_HELD, "emu-held")
    hx, hy = feats(hw), np.array(hy)
    log(f"emulator: {len(ex)} training windows, {len(hx)} held-out-speed windows")

    cwru_dir = Path(args.cwru)
    cw = cwru_data(cwru_dir) if (cwru_dir / "index.csv").exists() else {}
    cf = {}
    for name, r in cw.items():
        cf[name] = {"label": r["label"], "size": r["size"], "fs": r["fs"],
                    "train": feats(r["train"]), "eval": feats(r["eval"]),
                    "eval_fs": np.array([w.fs for w in r["eval"]])}
    log(f"CWRU: {len(cf)} records from {cwru_dir if cf else '(absent)'}: "
        f"{sum(len(r['train']) for r in cf.values())} train / {sum(len(r['eval']) for r in cf.values())} eval windows")

    def stack(names: list[str], part: str):
        xs = [cf[n][part] for n in names]
        ys = [np.full(len(cf[n][part]), cf[n]["label"]) for n in names]
        return (np.concatenate(xs) if xs else np.empty((0, len(NAMES))),
                np.concatenate(ys).astype(int) if ys else np.empty(0, int))

    cx, cy = stack(list(cf), "train")
    vw, vy, v_skipped = evidence_windows([Path(d) for d in args.evidence])
    vx = feats(vw)
    if args.evidence:
        log(f"evidence: {len(vw)} labelled windows from {args.evidence}; skipped: {v_skipped or 'none'}")
    x_raw = np.concatenate([ex, cx, vx])
    y = np.concatenate([ey, cy, np.asarray(vy, dtype=int)]).astype(int)
    w = np.concatenate([np.ones(len(ex)), np.full(len(cx), CWRU_WEIGHT), np.full(len(vx), CWRU_WEIGHT)])
    assert np.all(np.isfinite(x_raw)) and np.all(x_raw > 0), "non-positive feature in the training set"

    g = np.log(x_raw)
    # rounded to 12 significant digits: NumPy's summation can differ in the last bit with the
    # array's memory alignment, and the manifest (which carries them) must be byte-repeatable
    mean = np.array([float(f"{v:.12g}") for v in g.mean(axis=0)])
    std = np.array([float(f"{v:.12g}") for v in g.std(axis=0) + 1e-6])
    z = ((g - mean) / std).astype(np.float32)

    def healthy_stats(zz, yy):
        hz = zz[yy == 0]
        centre, spread = hz.mean(axis=0), hz.std(axis=0) + 1e-3
        d = np.clip((hz - centre) / spread, -4, 4)
        raw = np.mean(d * d, axis=1)
        return centre, spread, float(np.quantile(raw, 0.999))

    centre, spread, scale = healthy_stats(z, y)

    # ---------------------------------------------------------------- validation models (float)
    def fit_eval(train_names: list[str], seed: int):
        tx, ty = stack(train_names, "train")
        xx = np.concatenate([ex, tx]); yy = np.concatenate([ey, ty]).astype(int)
        ww = np.concatenate([np.ones(len(ex)), np.full(len(tx), CWRU_WEIGHT)])
        zz = normalise(xx, mean, std).astype(np.float32)
        c, s, sc = healthy_stats(zz, yy)
        thr = min(max(1.5, 1.25 * float(np.max(anomaly_np(zz[yy == 0], c, s, sc)))), ANOMALY_CLIP * 0.9)  # as shipped
        return train(tf, zz, yy, ww, c, s, sc, seed), c, s, sc, thr

    loso = []
    if cf:
        for size in (7, 14, 21):
            held = [n for n in cf if cf[n]["size"] == size]
            keep = [n for n in cf if n not in held]
            log(f"leave-one-fault-size-out: training without the {size} mil records")
            m, c, s, sc, thr = fit_eval(keep, SEED + size)
            for n in held:
                xx = np.concatenate([cf[n]["train"], cf[n]["eval"]])  # the whole record is unseen
                zz = normalise(xx, mean, std).astype(np.float32)
                p, _a = m.predict(zz, verbose=0)
                a = anomaly_np(zz, c, s, sc)
                pred = p.argmax(1)
                loso.append({"file": n, "label": LABELS[cf[n]["label"]], "n": len(xx),
                             "correct": float(np.mean(pred == cf[n]["label"])),
                             "not_normal": float(np.mean((pred != 0) | (a > thr))), "threshold": thr,
                             "calls": {LABELS[k]: int(np.sum(pred == k)) for k in range(len(LABELS))}})

    # ---------------------------------------------------------------- the shipped model
    log(f"training the shipped model on {len(z)} windows ({len(ex)} emulated, {len(cx)} CWRU)")
    model = train(tf, z, y, w, centre, spread, scale, SEED)
    rng = np.random.default_rng(SEED)
    rep = z[rng.permutation(len(z))[:1000]]
    tflite = convert(tf, model, rep)
    tflite_f = convert_float(tf, model)
    runner = Int8Runner(tf, tflite)

    # thresholds on training data
    p_tr, a_tr = runner.run(z)
    a_healthy = a_tr[y == 0]
    thr_anomaly = float(max(1.5, 1.25 * np.max(a_healthy)))
    thr_anomaly = min(thr_anomaly, ANOMALY_CLIP * 0.9)
    label_conf = 0.6
    log(f"thresholds: anomaly {thr_anomaly:.3f} (healthy training max {np.max(a_healthy):.3f}, "
        f"99.9% {np.quantile(a_healthy, 0.999):.3f}), label confidence {label_conf}")

    def alerts(p, a):
        top = p.argmax(1)
        return (a > thr_anomaly) | ((top != 0) & (p.max(1) >= label_conf))

    # drift profile (edge_agent/drift.py): healthy machines are the reference (emulated ones
    # in every regime, plus the CWRU healthy training windows), one per speed regime; the
    # monitored features are those whose healthy distribution does not move from machine to
    # machine: judged on emulated healthy machines never used for the reference, PSI < drift.
    ref_x, ref_rpm = drift_reference(feats)
    cw_healthy = [n for n in cf if cf[n]["label"] == 0]
    cwx = np.concatenate([cf[n]["train"] for n in cw_healthy]) if cw_healthy else np.empty((0, len(NAMES)))
    ref_x = np.concatenate([ref_x, cwx])
    ref_rpm = np.concatenate([ref_rpm, np.full(len(cwx), 1797.0)])
    regimes = drift_regimes()
    profile_all = make_profile(ref_x, NAMES, rpm=ref_rpm, regimes=regimes)
    probe_psi = {n: {} for n in NAMES}  # feature -> regime -> PSI of each probe machine
    for regime, px, _ in drift_probe_machines(feats):
        ref_feats = profile_all["regimes"].get(regime, profile_all)["features"]
        for j, n in enumerate(NAMES):
            probe_psi[n].setdefault(regime, []).append(psi_exact(px[:, j], ref_feats[n]))
    monitored = [n for n in NAMES if max(max(v) for v in probe_psi[n].values()) < DRIFT_PSI_DRIFT]
    regime_monitored = {r: [n for n in NAMES if max(probe_psi[n].get(r, [np.inf])) < DRIFT_PSI_DRIFT] for r in regimes}
    drift = make_profile(ref_x, NAMES, monitored=monitored, rpm=ref_rpm, regimes=regimes,
                         regime_monitored=regime_monitored,
                         population=f"healthy machines: {len(ref_x) - len(cwx)} emulated windows "
                                    f"(every regime) and {len(cwx)} CWRU healthy training windows")
    healthy_ref = ref_x
    probe = [0] * sum(len(v) for v in probe_psi[NAMES[0]].values())
    log(f"drift profile: {len(ref_x)} healthy windows in {len(drift['regimes'])} regimes; "
        f"monitored everywhere {len(monitored)}/{len(NAMES)}: {monitored}; per regime: "
        + "; ".join(f"{r} {len(m)}" for r, m in regime_monitored.items()))

    # reference vectors: a spread of training windows of every class, expected outputs from TF's interpreter
    ref_idx = np.concatenate([rng.choice(np.flatnonzero(y == k), 8, replace=False) for k in range(len(LABELS))])
    ref_x = x_raw[ref_idx].astype(np.float32)
    rp, ra = runner.run(normalise(ref_x.astype(np.float64), mean, std))
    buf = io.BytesIO()
    np.savez(buf, features=ref_x, out_probabilities=rp, out_anomaly=ra[:, None])

    def tensor(d):
        s, zp = d["quantization"]
        return {"name": d["name"], "dtype": "int8", "shape": [-1, int(d["shape"][1])], "scale": float(s), "zero_point": int(zp)}

    manifest = {
        "name": "default",
        "version": VERSION,
        "created": dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc).isoformat(),  # fixed: repeatable bytes
        "labels": LABELS,
        "features": {
            "names": NAMES,
            "spec": {"band_edges_hz": list(spec.band_edges_hz),
                     "envelope_band_hz": list(spec.envelope_band_hz) if spec.envelope_band_hz else None,
                     "order_tolerance": spec.order_tolerance, "noise_floor_bins": spec.noise_floor_bins,
                     "bearing_orders": {"ftf": spec.orders.ftf, "bpfo": spec.orders.bpfo, "bpfi": spec.orders.bpfi,
                                        "bsf": spec.orders.bsf}},
            "window_length": WINDOW,
            "hop": HOP,
            "window_reference_fs_hz": REFERENCE_FS,
            "fs_range": [12000.0, 48000.0],
            "channel_roles": ["accelerometer"],
            "normalisation": {"log": LOG, "mean": mean.tolist(), "std": std.tolist()},
        },
        "tensors": {"input": tensor(runner.inp), "probabilities": tensor(runner.p), "anomaly": tensor(runner.a)},
        "thresholds": {"anomaly": thr_anomaly, "label_confidence": label_conf,
                       "alert_rule": "anomaly > thresholds.anomaly, or top label != normal with probability >= label_confidence"},
        "drift_profile": drift,
        "training": {"seed": SEED, "emulator_speeds_rpm": EMU_SPEEDS_TRAIN, "emulator_rates_hz": EMU_RATES,
                     "cwru_records": sorted(cf), "cwru_time_split": TRAIN_FRACTION},
    }
    out = Path(args.out)
    write_pack(out, manifest, {"model.tflite": tflite, "reference.npz": buf.getvalue()})
    log(f"wrote {out}: {out.stat().st_size} bytes ({len(tflite)} bytes of TFLite)")

    # ---------------------------------------------------------------- evaluation

    def float_run(zz):
        p, a = model.predict(zz.astype(np.float32), verbose=0)
        return p, a[:, 0]

    eval_sets = {}
    if cf:
        evx, evy = stack(list(cf), "eval")
        eval_sets["CWRU eval (last 30% of every record)"] = (evx, evy)
    eval_sets["emulator, held-out speeds 1800/2700 rpm, unseen seeds"] = (hx, hy)
    results = {}
    for key, (xx, yy) in eval_sets.items():
        zz = normalise(xx, mean, std).astype(np.float32)
        pf, af = float_run(zz)
        pq, aq = runner.run(zz)
        results[key] = {"n": len(xx), "agree": float(np.mean(pf.argmax(1) == pq.argmax(1))),
                        "conf_int8": confusion(yy, pq.argmax(1)), "conf_float": confusion(yy, pf.argmax(1)),
                        "alert_healthy": int(np.sum(alerts(pq, aq)[yy == 0])), "n_healthy": int(np.sum(yy == 0)),
                        "healthy_called": int(np.sum(pq.argmax(1)[yy == 0] != 0)),
                        "not_normal_fault": float(np.mean(((pq.argmax(1) != 0) | (aq > thr_anomaly))[yy != 0])) if np.any(yy != 0) else float("nan")}

    held = held_out_breakdown(hy, hmeta, *runner.run(normalise(hx, mean, std).astype(np.float32)), thr_anomaly)
    sw, sy, smeta = emulator_windows(EMU_SPEEDS_HELD, EMU_SEEDS_HELD, "emu-stream", n_windows=STREAM_WINDOWS)
    sp, sa = runner.run(normalise(feats(sw), mean, std).astype(np.float32))
    held["streams"] = machine_streams(sp, sa, np.array(sy), smeta, thr_anomaly, label_conf)
    log(f"held-out machines, {STREAM_WINDOWS} windows each: " + "; ".join(
        f"{k} {v['alerted']}/{v['machines']} with an alert" for k, v in held["streams"]["by_label"].items()))

    per_file = []
    for n, r in cf.items():
        zz = normalise(r["eval"], mean, std).astype(np.float32)
        pq, aq = runner.run(zz)
        pred = pq.argmax(1)
        al = alerts(pq, aq)
        per_file.append({"file": n, "label": LABELS[r["label"]], "n": len(zz), "correct": float(np.mean(pred == r["label"])),
                         "alerts": int(al.sum()), "not_normal": float(np.mean((pred != 0) | (aq > thr_anomaly))),
                         "anomaly_max": float(aq.max()), "anomaly_median": float(np.median(aq)),
                         "calls": {LABELS[k]: int(np.sum(pred == k)) for k in range(len(LABELS))},
                         "by_fs": {f"{fs/1000:g} kHz": int(np.sum(r["eval_fs"] == fs)) for fs in np.unique(r["eval_fs"])}})

    wb_f, wb_q = weight_bytes(tf, tflite_f), weight_bytes(tf, tflite)

    # ---------------------------------------------------------------- the agent's runtime
    runtime = {"ok": False, "detail": "runtime python not found"}
    if Path(args.runtime_python).exists():
        tmp = out.with_suffix(".check.npz")
        np.savez(tmp, features=np.concatenate([cf[n]["eval"] for n in cf]) if cf else hx)
        try:
            res = subprocess.run([args.runtime_python, str(ROOT / "models" / "check_pack.py"), str(out), str(tmp)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=600)
            if res.returncode == 0:
                runtime = json.loads(res.stdout.strip().splitlines()[-1])
                runtime["ok"] = True
                ref_top = runner.run(normalise(np.load(tmp)["features"], mean, std).astype(np.float32))[0].argmax(1)
                runtime["agree_with_tf"] = float(np.mean(np.array(runtime.pop("top")) == ref_top))
            else:
                runtime = {"ok": False, "detail": (res.stderr or res.stdout).strip()[-600:]}
        finally:
            tmp.unlink(missing_ok=True)
    log(f"runtime check: { {k: v for k, v in runtime.items() if k != 'top'} }")

    write_report(Path(args.report), out, tflite, tflite_f, wb_f, wb_q, results, per_file, held, loso, runtime,
                 thr_anomaly, label_conf, np.max(a_healthy), len(ex), len(cx), len(hx), time.time() - t0,
                 (len(healthy_ref), probe_psi, monitored, len(probe)))
    log(f"wrote {args.report}; done in {time.time() - t0:.0f} s")
    return 0 if runtime.get("ok") else 1


def held_out_breakdown(y: np.ndarray, meta: list[dict], p: np.ndarray, a: np.ndarray, thr: float) -> dict:
    """The held-out emulator windows by (label, rate, speed) and, for faults, by severity (the
    fault's impulse amplitude over the noise RMS, both in g): where the misses are."""
    pred = p.argmax(1)
    not_normal = (pred != 0) | (a > thr)
    fs = np.array([m["fs"] for m in meta])
    speed = np.array([m["speed"] for m in meta])
    severity = np.array([m["severity"] for m in meta])

    def row(sel: np.ndarray, ci: int) -> dict:
        return {"n": int(sel.sum()), "correct": float(np.mean(pred[sel] == ci)),
                "not_normal": float(np.mean(not_normal[sel])),
                "calls": {LABELS[k]: int(np.sum(pred[sel] == k)) for k in range(len(LABELS))}}

    by_config = [{"label": LABELS[ci], "fs": f, "speed": v, **row((y == ci) & (fs == f) & (speed == v), ci)}
                 for ci in range(len(LABELS)) for f in EMU_RATES for v in EMU_SPEEDS_HELD]
    by_severity = []
    for lo, hi in SEVERITY_BINS:
        for ci in range(1, len(LABELS)):
            sel = (y == ci) & (severity >= lo) & (severity < hi)
            if sel.any():
                by_severity.append({"label": LABELS[ci], "bin": (lo, hi), **row(sel, ci)})
    return {"by_config": by_config, "by_severity": by_severity}




def machine_streams(p: np.ndarray, a: np.ndarray, y: np.ndarray, meta: list[dict], thr: float, conf: float) -> dict:
    """The daemon's alert rule on each held-out machine's consecutive windows: a window hits
    its label's type when the label is a fault with probability >= ``conf``, else
    ``anomaly`` when the score is >= ``thr`` (pack_scorer.PackScorer.hit); each type runs
    the k-of-n hysteresis of the default config (alerts.TypedHysteresis, as
    pack_scorer.PackAlertRules does). Per label: machines with an alert, with the right
    type first, and the same for the faint ones (impulses under 4x the noise)."""
    from edge_agent.alerts import TypedHysteresis, type_rules
    from edge_agent.config import default_config

    default, by_type = type_rules(default_config())
    top = p.argmax(1)
    hits = [LABELS[t] if t != 0 and p[i, t] >= conf else ("anomaly" if a[i] >= thr else None)
            for i, t in enumerate(top.tolist())]
    machines: dict[tuple, list[int]] = {}
    for i, m in enumerate(meta):
        machines.setdefault((int(y[i]), m["speed"], m["fs"], m["seed"]), []).append(i)
    by_label: dict[str, dict] = {}
    healthy_alerted = []
    for (ci, speed, fs, seed), rows in machines.items():
        rules, seen, raised = TypedHysteresis(default, by_type), set(), []
        for i in rows:
            if hits[i] is not None:
                seen.add(hits[i])
            for kind in sorted(seen):
                raised += [m["type"] for m in rules.step("de", kind, hits[i] == kind,
                                                          lambda k: {"type": k, "state": "open"}) if m["state"] == "open"]
        faint = meta[rows[0]]["severity"] < 4.0
        r = by_label.setdefault(LABELS[ci], {"machines": 0, "alerted": 0, "right_first": 0,
                                             "faint": 0, "faint_alerted": 0, "faint_right_first": 0})
        r["machines"] += 1
        r["alerted"] += bool(raised)
        r["right_first"] += bool(raised) and raised[0] == LABELS[ci]
        if ci and faint:
            r["faint"] += 1
            r["faint_alerted"] += bool(raised)
            r["faint_right_first"] += bool(raised) and raised[0] == LABELS[ci]
        if ci == 0 and raised:
            healthy_alerted.append({"speed": speed, "fs": fs, "seed": seed, "types": sorted(set(raised))})
    h = y == 0
    return {"by_label": by_label, "which": healthy_alerted,
            "healthy_windows": int(h.sum()), "healthy_called": int(np.sum(top[h] != 0)),
            "healthy_hits": sum(hits[i] is not None for i in np.flatnonzero(h)),
            "rule": f"{default.raise_after} of {default.raise_window} windows, cleared after {default.clear_after} quiet"}


def write_report(path, out, tflite, tflite_f, wb_f, wb_q, results, per_file, held, loso, runtime,
                 thr, conf, healthy_max, n_emu, n_cwru, n_held, secs, drift_info) -> None:
    L = ["# models/default.pack: build report", "",
         f"Generated by `models/build.py` (seed {SEED}, version {VERSION}; {secs:.0f} s). Re-run with `make model`.", ""]
    L += ["## Goals: met or not", ""] + goals(results, per_file, wb_f, wb_q, loso, held) + [""]
    L += ["## Sizes", "",
          f"- pack file: **{out.stat().st_size} bytes**; int8 `model.tflite`: {len(tflite)} bytes; "
          f"float32 TFLite of the same Keras model: {len(tflite_f)} bytes",
          f"- weight tensors (dense kernels): float32 {wb_f['kernels']} bytes, int8 {wb_q['kernels']} bytes "
          f"(ratio {wb_q['kernels'] / max(wb_f['kernels'], 1):.3f})",
          f"- bias tensors: float32 {wb_f['biases']} bytes, int8 model {wb_q['biases']} bytes (int32, as TFLite's "
          f"int8 scheme requires: they are added to 32-bit accumulators)",
          f"- kernels and biases together: float32 {wb_f['kernels'] + wb_f['biases']}, int8 "
          f"{wb_q['kernels'] + wb_q['biases']} bytes (ratio "
          f"{(wb_q['kernels'] + wb_q['biases']) / max(wb_f['kernels'] + wb_f['biases'], 1):.3f})", ""]
    L += ["## Training data", "",
          f"- emulator: {n_emu} windows (speeds {EMU_SPEEDS_TRAIN} rpm, native rates {EMU_RATES} Hz, "
          f"seeds {EMU_SEEDS}, {EMU_WINDOWS} windows per configuration, random severity/noise/resonance)",
          f"- CWRU 0 hp: {n_cwru} windows from the first 70% of every record (weight {CWRU_WEIGHT})",
          f"- held-out emulator set: {n_held} windows at {EMU_SPEEDS_HELD} rpm, {len(EMU_SEEDS_HELD)} machines (seeds "
          f"{EMU_SEEDS_HELD[0]}-{EMU_SEEDS_HELD[-1]}, never used in training) per rate and label", ""]
    L += ["## Thresholds (chosen on training data)", "",
          f"- anomaly: {thr:.3f} = max(1.5, 1.25 x the largest int8 anomaly score of any healthy training window "
          f"({healthy_max:.3f})); the score is 1.0 at the healthy training windows' 99.9% quantile (float) and saturates at {ANOMALY_CLIP}",
          f"- label confidence: {conf}",
          "- alert rule used below: anomaly > threshold, or top label != normal with probability >= label confidence", ""]
    L += ["## Evaluation (int8 model, TF's TFLite interpreter)", ""]
    for key, r in results.items():
        L += [f"### {key}: {r['n']} windows", "",
              f"- float32 vs int8 top-label agreement: **{100 * r['agree']:.2f}%**",
              f"- healthy windows with an alert: **{r['alert_healthy']} of {r['n_healthy']}**",
              f"- fault windows called not-normal (label or anomaly): {100 * r['not_normal_fault']:.1f}%", "",
              "int8:", "", md_confusion(r["conf_int8"]), "", "float32:", "", md_confusion(r["conf_float"]), ""]
    if per_file:
        L += ["### Per file, CWRU evaluation part (last 30%)", "",
              "| file | label | windows | correct | alerts | not-normal | anomaly median / max | calls |", "|---|---|---|---|---|---|---|---|"]
        for r in per_file:
            calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items() if v)
            L.append(f"| {r['file']} | {r['label']} | {r['n']} ({', '.join(f'{k}: {v}' for k, v in r['by_fs'].items())}) | "
                     f"{100 * r['correct']:.1f}% | {r['alerts']} | {100 * r['not_normal']:.1f}% | "
                     f"{r['anomaly_median']:.2f} / {r['anomaly_max']:.2f} | {calls} |")
        L.append("")
    L += [f"### emulator held-out set by rate and speed ({len(EMU_SEEDS_HELD)} machines each)", "",
          "| label | rate | rpm | windows | correct | not-normal | calls |", "|---|---|---|---|---|---|---|"]
    for r in held["by_config"]:
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items() if v)
        L.append(f"| {r['label']} | {r['fs'] / 1000:g} kHz | {r['speed']} | {r['n']} | {100 * r['correct']:.1f}% | "
                 f"{100 * r['not_normal']:.1f}% | {calls} |")
    st = held["streams"]
    hl = st["by_label"]["normal"]
    L += ["", f"### Held-out machines as the daemon sees them ({STREAM_WINDOWS} consecutive windows each)", "",
          f"Each held-out machine (the same {hl['machines']} per label) for {STREAM_WINDOWS} consecutive windows "
          f"(~14 s), through the default config's alert rule per type ({st['rule']}), as the daemon applies it. "
          f"Healthy machines: **{hl['alerted']} with an alert**"
          + (" (" + ", ".join(f"{w['speed']} rpm {w['fs'] / 1000:g} kHz seed {w['seed']}: " + "/".join(w["types"])
                              for w in st["which"]) + ")" if st["which"] else "")
          + f"; of their {st['healthy_windows']} windows {100 * st['healthy_called'] / max(st['healthy_windows'], 1):.1f}% "
          f"called a fault, {100 * st['healthy_hits'] / max(st['healthy_windows'], 1):.1f}% hit the alert rule.", "",
          "| label | machines | with an alert | its own type first | faint machines (impulse < 4x noise) | faint: with an alert | faint: own type first |",
          "|---|---|---|---|---|---|---|"]
    for label, r in st["by_label"].items():
        if label == "normal":
            continue
        L.append(f"| {label} | {r['machines']} | {r['alerted']} | {r['right_first']} | {r['faint']} | "
                 f"{r['faint_alerted']} | {r['faint_right_first']} |")
    L += ["", "Fault windows by severity: the fault's impulse amplitude over the noise RMS (both drawn at "
          "random per machine: impulses 0.15-1.0 g, noise 0.03-0.12 g):", "",
          "| label | impulse / noise | windows | correct | not-normal | calls |", "|---|---|---|---|---|---|"]
    for r in held["by_severity"]:
        lo, hi = r["bin"]
        band = f">= {lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"
        calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items() if v)
        L.append(f"| {r['label']} | {band} | {r['n']} | {100 * r['correct']:.1f}% | {100 * r['not_normal']:.1f}% | {calls} |")
    L.append("")
    if loso:
        L += ["### Leave-one-fault-size-out (float model retrained without that size's CWRU records; whole record unseen)", "",
              "| held-out file | label | windows | correct | not-normal (label, or anomaly > that model's threshold) | calls |", "|---|---|---|---|---|---|"]
        for r in loso:
            calls = ", ".join(f"{k} {v}" for k, v in r["calls"].items() if v)
            L.append(f"| {r['file']} | {r['label']} | {r['n']} | {100 * r['correct']:.1f}% | {100 * r['not_normal']:.1f}% | {calls} |")
        L.append("")
    n_ref, probe_psi, monitored, n_probe = drift_info
    L += ["## Drift profile (edge_agent/drift.py)", "",
          f"Reference: {n_ref} windows of healthy machines (emulated ones at four speeds in every default speed "
          "regime, three rates, two machines each with its own noise level, resonance and shaft modulation; plus "
          "the CWRU healthy training windows), one reference per regime (deciles for PSI, 201 quantiles for KS): "
          "the envelope SNRs' healthy distribution depends on the order resolution, so on the speed. "
          f"Monitored in a regime: the features whose PSI against that regime's reference stays below the drift level "
          f"({DRIFT_PSI_DRIFT}) on every one of {n_probe} emulated healthy machines never used for the reference "
          "of that regime (one other speed per regime, every rate, two machines each, 300 windows). The others differ from healthy "
          "machine to healthy machine by design (shape statistics depend on the machine's tonal content; the FTF "
          "lines sit near the shaft line, so they carry its unbalance), so they would report healthy machines as "
          "drifted. PSI of 300 healthy windows against a reference of ~500 is about 0.03-0.1 by sampling alone, "
          "so `warn` (0.1) is common on healthy machines; `drift` (0.25) is the alert level.", "",
          "Largest PSI over each regime's probe machines; **bold** = monitored in that regime:", "",
          "| feature | " + " | ".join(next(iter(probe_psi.values())).keys()) + " |",
          "|---|" + "---|" * len(next(iter(probe_psi.values())))]
    for name, per in probe_psi.items():
        cells = [f"**{max(v):.3f}**" if max(v) < DRIFT_PSI_DRIFT else f"{max(v):.3f}" for v in per.values()]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    L.append("")
    L += ["## The agent's runtime (edge_agent.model_runtime.PackModel in .venv)", ""]
    if runtime.get("ok"):
        L += [f"- loads and passes its self-test: yes (backend {runtime.get('backend')})",
              f"- latency, batch of 64 windows: {runtime['batch64_ms']:.3f} ms per invoke = "
              f"**{runtime['per_window_us']:.1f} us per window** (median of {runtime['repeats']})",
              f"- runtime top labels vs TF interpreter on the CWRU eval windows: {100 * runtime.get('agree_with_tf', float('nan')):.2f}% "
              "(computed by check_pack.py against the same features)" if "agree_with_tf" in runtime else "", ""]
    else:
        L += [f"- **FAILED**: {runtime.get('detail')}", ""]
    path.write_text("\n".join(L) + "\n" + STATIC_NOTES)


def goals(results, per_file, wb_f, wb_q, loso, held) -> list[str]:
    def yes(ok):
        return "**met**" if ok else "**NOT met**"
    out = []
    cw = next((r for k, r in results.items() if k.startswith("CWRU")), None)
    if cw:
        out.append(f"- float32 vs int8 top-label agreement >= 99% (CWRU eval windows): {100 * cw['agree']:.2f}% - {yes(cw['agree'] >= 0.99)}")
    em = next(r for k, r in results.items() if k.startswith("emulator"))
    out.append(f"- same on the held-out-speed emulator windows: {100 * em['agree']:.2f}% - {yes(em['agree'] >= 0.99)}")
    ratio = wb_q["kernels"] / max(wb_f["kernels"], 1)
    both = (wb_q["kernels"] + wb_q["biases"]) / max(wb_f["kernels"] + wb_f["biases"], 1)
    out.append(f"- int8 weight tensors <= 1/4 of float32: {wb_q['kernels']} / {wb_f['kernels']} = {ratio:.3f} - "
               f"{yes(ratio <= 0.25)}. Counting the biases too (int32 in TFLite's int8 scheme, so they cannot "
               f"shrink) the ratio is {both:.3f}: above 1/4; see Sizes")
    for lab, excl in (("inner_race", ()), ("outer_race", ("1797_OR@6_14_DE12.npz",))):
        rows = [r for r in per_file if r["label"] == lab and r["file"] not in excl]
        if rows:
            n = sum(r["n"] for r in rows)
            c = sum(round(r["correct"] * r["n"]) for r in rows)
            note = " (14 mil record excluded: known undiagnosable)" if excl else ""
            out.append(f"- CWRU eval {lab} windows correct >= 98%{note}: {c}/{n} = {100 * c / n:.1f}% - {yes(c / n >= 0.98)}")
    h = [r for r in per_file if r["label"] == "normal"]
    if h:
        a = sum(r["alerts"] for r in h)
        out.append(f"- no alert on any CWRU healthy eval window: {a} of {sum(r['n'] for r in h)} alert - {yes(a == 0)}")
    b = [r for r in per_file if r["label"] == "ball"]
    if b:
        n = sum(r["n"] for r in b)
        c = sum(round(r["correct"] * r["n"]) for r in b)
        nn = sum(round(r["not_normal"] * r["n"]) for r in b)
        out.append(f"- ball (no goal on this data; reported): {c}/{n} = {100 * c / n:.1f}% labelled ball, {100 * nn / n:.1f}% not-normal")
    for key, r in results.items():
        if r["n_healthy"]:
            out.append(f"- {key}: healthy windows called a fault {r['healthy_called']}/{r['n_healthy']} = "
                       f"{100 * r['healthy_called'] / r['n_healthy']:.1f}% (target <= 2%) - "
                       f"{yes(r['healthy_called'] <= 0.02 * r['n_healthy'])}; windows that hit the alert rule: {r['alert_healthy']}")
    em_conf = em["conf_int8"]
    diag = {LABELS[i]: em_conf[i, i] / max(em_conf[i].sum(), 1) for i in range(1, len(LABELS))}
    out.append(f"- held-out emulator machines, the issue's per-window targets as a proxy: fault windows called "
               f"not-normal {100 * em['not_normal_fault']:.1f}% (target 99%) - {yes(em['not_normal_fault'] >= 0.99)}; "
               + "; ".join(f"{k} diagnosed {100 * v:.1f}% (target {t}%) - {yes(v >= t / 100)}"
                           for (k, v), t in zip(diag.items(), (98, 98, 90)))
               + ". The misses are faint faults (table by severity)")
    st = held["streams"]
    hl = st["by_label"]["normal"]
    out.append(f"- no alert on a healthy machine, the daemon's rule ({st['rule']}) on {hl['machines']} held-out "
               f"emulated healthy machines, {STREAM_WINDOWS} consecutive windows each: {hl['alerted']} with an "
               f"alert - {yes(hl['alerted'] == 0)}; their windows called a fault: "
               f"{100 * st['healthy_called'] / st['healthy_windows']:.1f}% (target <= 2%) - "
               f"{yes(st['healthy_called'] <= 0.02 * st['healthy_windows'])}")
    faults = [r for k, r in st["by_label"].items() if k != "normal"]
    n_f, n_a = sum(r["machines"] for r in faults), sum(r["alerted"] for r in faults)
    out.append(f"- (no target; reported) held-out emulated faulty machines with an alert within {STREAM_WINDOWS} "
               f"windows: {n_a} of {n_f} ({100 * n_a / max(n_f, 1):.1f}%); faint ones (impulse < 4x noise): "
               f"{sum(r['faint_alerted'] for r in faults)} of {sum(r['faint'] for r in faults)}")
    out.append("- issue #5 generalisation targets (unseen loads/speeds/sizes/positions): **not measurable here** "
               "(no such recordings). Proxy: leave-one-fault-size-out, whole records unseen (float model, table below):")
    if loso:
        def agg(rows, key):
            n = sum(r["n"] for r in rows)
            return sum(r[key] * r["n"] for r in rows) / n if n else float("nan")
        for lab, goal, excl in (("inner_race", 0.98, ()), ("outer_race", 0.98, ("1797_OR@6_14_DE12.npz",)), ("ball", 0.90, ())):
            rows = [r for r in loso if r["label"] == lab and r["file"] not in excl]
            v = agg(rows, "correct")
            note = " (14 mil excluded)" if excl else ""
            out.append(f"  - {lab} diagnosed{note}: {100 * v:.1f}% (target {100 * goal:.0f}%) - {yes(v >= goal)}")
        v = agg(loso, "not_normal")
        out.append(f"  - fault windows called not-normal, every held-out record: {100 * v:.1f}% (target 99%) - {yes(v >= 0.99)}")
    return out


STATIC_NOTES = """
## How it was validated (what is held out)

- **CWRU time split** (the issue's acceptance split): every record's first 70% trains, its last
  30% evaluates; windows are cut inside each part, so no evaluation window overlaps a training
  one. It is *not* a generalisation test: train and evaluation windows come from the same
  record (same bearing, same fault, same load).
- **Leave-one-fault-size-out** (the honest proxy): for each fault size (7, 14, 21 mil) a float
  model is retrained without any window of the three records of that size, then scored on the
  whole of them: bearings and defects it never saw (same rig and speed).
- **Held-out emulator speeds**: 1800 and 2700 rpm with seeds never used in training (the
  training speeds are 600-1500, 2100-3000 rpm), all three rates, 50 machines (seeds) for each
  speed, rate and label: 2400 windows per label. Until 2026-12-03 there were two machines
  each (96 healthy windows), where one false call moved the healthy rate by 1%; the pack is
  the same, only the evaluation grew.
- **How the configuration was chosen:** the input set, the shaft-modulation augmentation and the
  normal-class weight were chosen among about ten variants by the leave-one-size-out and
  held-out-speed figures (not by the time-split evaluation part). Those proxies have therefore
  been looked at, and their figures are somewhat optimistic too.
- **Machines as the daemon sees them**: each held-out machine (the same 300 per label) for 40
  consecutive windows, through the default config's k-of-n alert rule per type, as the daemon
  applies it: an alert needs repeated hits on one machine, so this counts machines, not
  windows. Emulated machines only: the one healthy CWRU record is 2.5 s long.
- Not available here: other loads/speeds of CWRU (1772/1750/1730 rpm), other fault positions
  (@3, @12), the 48 kHz fault records, the fan-end bearing, other machines. The issue's
  generalisation targets (99% of fault windows not-normal, 98/98/90% diagnosis, <= 2% false
  calls on healthy machines) are therefore **not measured**; the leave-one-size-out lines in
  the goals are the closest proxy.

## Window: the same duration at every rate

The pack says `window_length` 4096 and `hop` 2048 at `window_reference_fs_hz` 12000: the agent's
windower scales both with each channel's rate in powers of two (16384 at 48 kHz, 8192 at 25.6
kHz), so a window is about 0.34 s and the envelope spectrum's resolution about 3 Hz (0.1 order
at 1797 rpm) at every rate. A fixed 4096 at 48 kHz is 85 ms, 2.5 shaft turns: its envelope
lines are 0.4 order wide, so BPFI and its shaft sidebands, or 3xBPFO and 2xBPFI, merge.

## Why these input features

- Envelope order SNRs (`env_*`, 16 features): ratios of an envelope-spectrum line to its local
  median noise floor, located at defect *orders* of the window's true shaft speed. They are
  dimensionless, gain-independent and speed/rate-independent by construction: the same
  number means the same thing at 600 rpm / 12 kHz and 3000 rpm / 48 kHz. They carry the
  fault *type* (BPFO, BPFI, BSF families; BPFI shaft sidebands, 2xBSF cage sidebands).
- Shape statistics `kurtosis`, `crest`, `shape`, `impulse`, `clearance`: dimensionless, they
  carry *impulsiveness* (severity) independent of gain. (`skewness` left out: its sign
  depends on the sensor's mounting direction.)
- Left out: the envelope's shaft lines `env_shaft_1/2`. A healthy machine's envelope has a
  1x line from unbalance and runout (the CWRU healthy record's last part has SNR ~5 at 1x),
  so a model that uses it calls healthy machines inner-race faults. Inner-race evidence stays
  in the BPFI lines and their +-1x sidebands. The emulator's signals are also amplitude
  modulated at the shaft rate (random depth, half of the windows) so the model sees shaft
  sidebands around every fault type and on healthy machines.
- Left out: `mean`, `rms`, `peak`, `peak_to_peak`, `band_rms_*`, `velocity_rms_mm_s`,
  `spectral_centroid_hz`. They are absolute levels or fixed-frequency quantities: their scale
  depends on sensor gain, mounting, load, machine and sample rate, and the emulator's levels
  differ from CWRU's by about an order of magnitude. A model using them learns "which rig is
  this" rather than "which fault is this".
- All inputs are log-transformed (heavy right tails; SNRs span 1-100) before standardising.

## Anomaly output

Fixed (untrained) head inside the same TFLite graph: z = standardised log features; d =
(z - healthy centroid) / healthy spread per feature, clipped to +-4; score = mean(d^2) / q,
q = the 99.9% quantile of that quantity over healthy training windows, saturating at 8. So the
score is ~1 at the edge of the healthy training cloud, independent of the classifier, and an
unseen fault type that moves any feature raises it. Clipping keeps the int8 ranges tight.

## Known limitations (read before wiring)

- Ball faults: the CWRU ball records do not show the textbook 2xBSF signature (Smith &
  Randall 2015); leave-one-size-out ball diagnosis is far below the 90% target, and the 7 mil
  ball record looks healthy to every dimensionless feature here (kurtosis ~3, no envelope
  line), so neither the classifier nor the anomaly score calls it. An absolute level
  (velocity RMS against this machine's own healthy baseline, the daemon's baseline scorer)
  is what would catch it; a pack cannot know another machine's healthy level.
- Faint faults: on the held-out emulator machines a fault whose impulses are under 4x the
  noise RMS is called normal in a quarter to three quarters of its windows (table "by
  severity" above); from 4x up, 95-100% are diagnosed, from 8x up 99.6-100%. Most of the
  misses are at 12 kHz, inner race at 1800 rpm the worst (69.5%): the emulator gives the noise
  a fixed RMS at every rate, so at 12 kHz more of it falls in the resonance band the
  envelope looks at, and at 1800 rpm fewer impulses fall in a window. The alert thresholds
  trade these misses against false calls on healthy machines (1.7% of windows here, within
  the 2% target); they were not moved for this table.
- The 14 mil outer-race record is known undiagnosable (Smith & Randall 2015); it is reported
  but excluded from the outer-race goals. It too looks healthy to these features.
- Only one healthy CWRU record exists (2.5 s at 48 kHz): "no alert on healthy" rests on few
  windows (overlapping ones, inside the evaluation part only).
- The defect orders come from the agent's `[bearing]` geometry (default: the SKF 6205 of
  the CWRU drive end; the manifest records the orders the pack was trained with). A
  recording of another bearing replayed with the default geometry looks at the wrong orders:
  only the anomaly score can catch its faults.
"""

if __name__ == "__main__":
    sys.exit(main())
