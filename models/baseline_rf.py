"""The issue's yardstick on the data we have: a random forest on textbook envelope features
against the shipped int8 pack (issue #5: "A random forest on textbook envelope features
reaches about 94% / 97% / 80% there; the int8 pack should beat it").

"There" is recordings at other loads, speeds and fault sizes that are not in ../shared, so
this measures both on the proxies build.py validates the pack with (models/REPORT.md):

1. the CWRU 0 hp time split (train on the first 70% of each record, evaluate on the last 30%);
2. leave one fault size out (the forest retrained without the 7, 14 or 21 mil records, then
   evaluated on the whole held-out records; the pack's own figures for this are in REPORT.md,
   a float model retrained the same way);
3. the held-out emulated machines (speeds 1800 and 2700 rpm, never trained on; 50 machines per
   speed, rate and label; build.py's EMU_SEEDS_HELD).

Both are trained on the same windows (build.py's emulator training set and the CWRU training
parts). Textbook features, per window as a textbook writes them (scipy): mean, standard
deviation, RMS, peak, crest factor, skewness, kurtosis; the envelope (Hilbert transform of a
fixed 2-5 kHz 4th-order Butterworth band-pass, zero phase) and its Hann-windowed amplitude
spectrum's largest value within +-2% of 1x, 2x and 3x BPFO, BPFI, BSF and FTF and of 1x and
2x shaft speed, the orders following each window's speed (the bearing of FeatureSpec.default).
21 numbers, as benches/bench_replay.py's textbook pipeline. The forest: scikit-learn's
RandomForestClassifier, 300 trees, seeded. "Not-normal": the forest's label is not normal; the
pack's label is not normal or its anomaly score is above its threshold (as REPORT.md counts).

Build time only, in .venv-build (scikit-learn, scipy: the build extra). Writes
models/BASELINE.md. Run: .venv-build/bin/python models/baseline_rf.py (make baseline).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.signal
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build as B  # noqa: E402  (models/build.py: the same data and constants)

from edge_agent.config import default_config  # noqa: E402
from edge_agent.features import FeatureSpec  # noqa: E402
from edge_agent.pack_scorer import PackScorer  # noqa: E402

BAND_HZ = (2000.0, 5000.0)
TOLERANCE = 0.02
TREES = 300


def textbook_features(x: np.ndarray, fs: float, rpm: float, orders) -> np.ndarray:
    """The 21 textbook numbers of one window (the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    rms = np.sqrt(np.mean(x * x))
    peak = np.max(np.abs(x))
    sos = _butter(fs)
    env = np.abs(scipy.signal.hilbert(scipy.signal.sosfiltfilt(sos, x)))
    env -= env.mean()
    hann = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(env * hann)) * 2.0 / hann.sum()
    df = fs / len(x)
    shaft = rpm / 60.0
    targets = [k * o * shaft for o in (orders.bpfo, orders.bpfi, orders.bsf, orders.ftf) for k in (1, 2, 3)]
    amps = []
    for f0 in targets + [shaft, 2 * shaft]:
        lo, hi = int(np.floor(f0 * (1 - TOLERANCE) / df)), int(np.ceil(f0 * (1 + TOLERANCE) / df))
        amps.append(float(np.max(spectrum[max(lo, 0) : hi + 1])))
    return np.array([x.mean(), x.std(), rms, peak, peak / rms if rms else 0.0,
                     scipy.stats.skew(x), scipy.stats.kurtosis(x, fisher=False), *amps])


_SOS: dict[float, np.ndarray] = {}


def _butter(fs: float) -> np.ndarray:
    if fs not in _SOS:
        _SOS[fs] = scipy.signal.butter(4, BAND_HZ, btype="bandpass", fs=fs, output="sos")
    return _SOS[fs]


def table(windows, orders) -> np.ndarray:
    return np.array([textbook_features(w.samples, w.fs, w.rpm, orders) for w in windows])


def forest(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=TREES, random_state=seed, n_jobs=-1).fit(x, y)


def per_class(y: np.ndarray, pred: np.ndarray, not_normal: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for ci, name in enumerate(B.LABELS):
        m = y == ci
        if m.any():
            out[name] = {"n": int(m.sum()), "correct": float(np.mean(pred[m] == ci)),
                         "not_normal": float(np.mean(not_normal[m]))}
    return out


def pack_side(scorer: PackScorer, windows) -> tuple[np.ndarray, np.ndarray]:
    """The shipped pack's labels and not-normal calls, through the agent's own runtime."""
    feats = scorer.extractor.extract(windows)
    preds = scorer.predict(feats, ["de"] * len(windows))
    lab = np.array([B.LABELS.index(p.label) for p in preds])
    nn = (lab != 0) | np.array([p.anomaly_score > scorer.anomaly_threshold for p in preds])
    return lab, nn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", default=str(B.ROOT / "models" / "default.pack"))
    ap.add_argument("--cwru", default=str(B.ROOT.parent / "shared" / "data" / "cwru"))
    ap.add_argument("--out", default=str(B.ROOT / "models" / "BASELINE.md"))
    args = ap.parse_args()
    t0 = time.time()
    orders = FeatureSpec.default().orders
    scorer = PackScorer(args.pack, default_config())

    B.log("emulator training windows (build.py's)")
    ew, ey, _ = B.emulator_windows(B.EMU_SPEEDS_TRAIN, B.EMU_SEEDS, "emu")
    ex, ey = table(ew, orders), np.array(ey)
    cwru_dir = Path(args.cwru)
    cw = B.cwru_data(cwru_dir) if (cwru_dir / "index.csv").exists() else {}
    B.log(f"CWRU: {len(cw)} records")
    cx = {n: {"train": table(r["train"], orders), "eval": table(r["eval"], orders)} for n, r in cw.items()}

    def stack(names, part):
        if not names:
            return np.empty((0, ex.shape[1])), np.empty(0, int)
        return (np.concatenate([cx[n][part] for n in names]),
                np.concatenate([np.full(len(cx[n][part]), cw[n]["label"]) for n in names]))

    tx, ty = stack(list(cw), "train")
    rf = forest(np.concatenate([ex, tx]), np.concatenate([ey, ty]), B.SEED)
    results = {}

    if cw:  # 1. the time split
        vx, vy = stack(list(cw), "eval")
        vw = [w for n in cw for w in cw[n]["eval"]]
        pred = rf.predict(vx)
        plab, pnn = pack_side(scorer, vw)
        results["time split"] = (per_class(vy, pred, pred != 0), per_class(vy, plab, pnn))

    loso = []
    if cw:  # 2. leave one fault size out (the forest only)
        for size in (7, 14, 21):
            held = [n for n in cw if cw[n]["size"] == size]
            kx, ky = stack([n for n in cw if n not in held], "train")
            m = forest(np.concatenate([ex, kx]), np.concatenate([ey, ky]), B.SEED + size)
            for n in held:
                xx = np.concatenate([cx[n]["train"], cx[n]["eval"]])
                pred = m.predict(xx)
                loso.append((n, B.LABELS[cw[n]["label"]], len(xx), float(np.mean(pred == cw[n]["label"])),
                             float(np.mean(pred != 0))))

    B.log(f"held-out emulated machines: speeds {B.EMU_SPEEDS_HELD}, {len(B.EMU_SEEDS_HELD)} machines each")
    hw, hy, _ = B.emulator_windows(B.EMU_SPEEDS_HELD, B.EMU_SEEDS_HELD, "emu-held")
    hy = np.array(hy)
    pred = rf.predict(table(hw, orders))
    plab, pnn = pack_side(scorer, hw)
    results["held-out emulated machines"] = (per_class(hy, pred, pred != 0), per_class(hy, plab, pnn))

    write(Path(args.out), results, loso, time.time() - t0, scorer.version)
    B.log(f"wrote {args.out}; done in {time.time() - t0:.0f} s")
    return 0


def write(path: Path, results, loso, seconds: float, version: str) -> None:
    L = ["# A random forest on textbook envelope features against the shipped pack", "",
         f"Generated by `models/baseline_rf.py` (pack {version}, {TREES} trees, seed {B.SEED}; {seconds:.0f} s). "
         "What is compared and why: the script's docstring. Per window; **bold** = the better of the two.", ""]
    for name, (rf_, pk) in results.items():
        L += [f"## {name}", "",
              "| label | windows | forest: correct | pack: correct | forest: not-normal | pack: not-normal |",
              "|---|---|---|---|---|---|"]
        for label in B.LABELS:
            if label not in rf_:
                continue
            a, b = rf_[label], pk[label]

            def pair(key, higher_better=True):
                x, y = 100 * a[key], 100 * b[key]
                if abs(x - y) < 0.05:
                    return f"{x:.1f}%", f"{y:.1f}%"
                better_x = (x > y) == higher_better
                return (f"**{x:.1f}%**", f"{y:.1f}%") if better_x else (f"{x:.1f}%", f"**{y:.1f}%**")

            c1, c2 = pair("correct")
            n1, n2 = pair("not_normal", higher_better=label != "normal")
            L.append(f"| {label} | {a['n']} | {c1} | {c2} | {n1} | {n2} |")
        L.append("")
    if loso:
        L += ["## Leave one fault size out (the forest; the pack's float model: REPORT.md, same protocol)", "",
              "| held-out file | label | windows | forest: correct | forest: not-normal |", "|---|---|---|---|---|"]
        for n, label, k, c, nn in loso:
            L.append(f"| {n} | {label} | {k} | {100 * c:.1f}% | {100 * nn:.1f}% |")
        L.append("")
    path.write_text("\n".join(L) + "\n" + NOTES)


NOTES = """## Reading it

- The issue's figures for the forest (about 94% / 97% / 80% inner / outer / ball) are on the
  unseen recordings; none of these proxies is that data, and the pack's targets there cannot be
  measured here (REPORT.md).
- Time split: the forest is trained on the first 70% of the very records it is scored on, so
  it can learn each record (the 14 mil outer-race record included, which REPORT.md's goal line
  leaves out as undiagnosable: unseen, in the leave-one-size-out table, neither diagnoses it).
- Leave one fault size out: the forest calls every window of every held-out record not-normal,
  where the pack's float model misses many ball 7 mil and outer-race 14 mil windows (REPORT.md:
  80.6% not-normal in all). The forest's inputs include absolute levels (RMS, peak, standard
  deviation): on this rig every fault record vibrates more than the one healthy record (2.5 s,
  one bearing), which a level threshold tells apart; whether that holds on other machines and
  loads is what the emulator check below asks. Its diagnosis across sizes is weaker than the
  pack's for inner race (0% and 25% on the unseen 14 and 21 mil records, the pack 96-100%).
- Held-out emulated machines (speeds, resonances, noise levels and machines never trained on):
  the forest calls 4.4% of healthy windows a fault (the pack 1.7%; the target is at most 2%),
  and finds more inner-race windows (93.7% against 90.9% diagnosed).
- So on these proxies the pack does **not** beat the forest on every figure: it is better on
  healthy machines and on inner-race faults of unseen sizes, worse at calling the faint or
  unseen faults not-normal. That is the same gap as REPORT.md's goal lines (faint faults,
  the anomaly score).
"""


if __name__ == "__main__":
    sys.exit(main())
