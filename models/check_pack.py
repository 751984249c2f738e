"""Check a built pack with the agent's own runtime (run in .venv, no TensorFlow):
load it (tensor checks + self-test), time a batch of 64 windows, and give the runtime's
top labels for the feature rows in FEATURES_NPZ. Prints one JSON line.

    .venv/bin/python models/check_pack.py models/default.pack features.npz
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from edge_agent.model_runtime import PackModel


def main(pack: str, feats_path: str) -> int:
    m = PackModel(pack)  # raises PackError when the self-test fails
    x = np.load(feats_path)["features"]
    top = m.run(x).probabilities.argmax(1)
    batch = np.resize(x, (64, x.shape[1]))
    m.run(batch)
    times = []
    for _ in range(200):
        t = time.perf_counter()
        m.run(batch)
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    print(json.dumps({"backend": getattr(m.backend, "name", str(m.backend)), "batch64_ms": med * 1e3,
                      "per_window_us": med / 64 * 1e6, "repeats": len(times), "top": top.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
