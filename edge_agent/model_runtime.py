"""Run a model pack: features in, labels, class scores and an anomaly score out.

Loading a pack (edge_agent/pack.py) does everything that can fail before the first live
window, so a bad pack is refused at once and the agent keeps the model it had:

1. the interpreter (edge_agent/interpreter.py: LiteRT, tflite_runtime or tensorflow.lite)
   loads ``model.tflite`` from memory;
2. its tensors are checked against the manifest: the input's shape, dtype and
   quantisation, and each named output's;
3. the pack's reference vectors run through the whole path (normalise, quantise, invoke,
   dequantise) and must give the manifest's expected outputs within one quantisation step
   and without NaN/Inf: the self-test.

Per batch of windows: features are normalised as the manifest says (log of the scale
features, then standardisation with the training set's mean and std), quantised with the
input tensor's scale and zero point, run in one invoke (the input is resized to the batch,
rounded up to a power of two so that reallocation is rare), and the outputs dequantised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.interpreter import load_backend
from edge_agent.pack import Pack, PackError, read_pack

SELF_TEST_STEPS = 1.0  # tolerance of the self-test, in output quantisation steps
_DTYPES = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32}


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """One batch's results: class probabilities (rows x labels) and anomaly scores (rows)."""

    probabilities: np.ndarray
    anomaly: np.ndarray
    labels: tuple[str, ...]

    def top_labels(self) -> list[str]:
        return [self.labels[i] for i in np.argmax(self.probabilities, axis=1)]


class PackModel:
    def __init__(self, pack: Pack | str, backend: str = "auto", num_threads: int = 1) -> None:
        self.pack = read_pack(pack) if isinstance(pack, str) else pack
        m = self.pack.manifest
        self.labels = tuple(m["labels"])
        self.feature_names = tuple(m["features"]["names"])
        norm = m["features"].get("normalisation", {})
        n = len(self.feature_names)
        try:
            self._log = np.asarray(norm.get("log", [False] * n), dtype=bool)
            self._mean = np.asarray(norm.get("mean", [0.0] * n), dtype=np.float64)
            self._std = np.asarray(norm.get("std", [1.0] * n), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PackError(f"{self.pack.path}: features.normalisation is malformed: {exc}") from None
        if not (len(self._log) == len(self._mean) == len(self._std) == n) or np.any(~(self._std > 0)):
            raise PackError(f"{self.pack.path}: features.normalisation needs {n} log flags, means and std > 0")
        self.backend = load_backend(backend)
        try:
            self._interp = self.backend.interpreter_class(model_content=self.pack.members["model.tflite"], num_threads=num_threads)
            self._interp.allocate_tensors()
        except Exception as exc:  # the interpreters raise ValueError/RuntimeError on a bad flatbuffer
            raise PackError(f"{self.pack.path}: model.tflite does not load: {exc}", reason="not_tflite") from None
        self._check_tensors(m["tensors"])
        self._batch = 0
        self.self_test()

    # -- checks at load ---------------------------------------------------------------------
    def _check_tensors(self, spec: dict[str, Any]) -> None:
        path = self.pack.path
        inputs = self._interp.get_input_details()
        outputs = {d["name"]: d for d in self._interp.get_output_details()}
        if len(inputs) != 1:
            raise PackError(f"{path}: the model has {len(inputs)} inputs, a pack model has one", reason="tensors")
        want_in = spec.get("input", {})
        self._in = self._check_one("input", inputs[0], want_in, len(self.feature_names))
        self._out: dict[str, dict] = {}
        for role, width in (("probabilities", len(self.labels)), ("anomaly", 1)):
            want = spec.get(role)
            if not isinstance(want, dict) or want.get("name") not in outputs:
                raise PackError(f"{path}: tensors.{role} names no output of the model (outputs: {', '.join(outputs)})", reason="tensors")
            self._out[role] = self._check_one(role, outputs[want["name"]], want, width)

    def _check_one(self, role: str, actual: dict, want: dict, width: int) -> dict:
        path = self.pack.path
        dtype = _DTYPES.get(want.get("dtype", ""))
        if dtype is None or actual["dtype"] != dtype:
            raise PackError(f"{path}: tensor {role} is {np.dtype(actual['dtype']).name}, the manifest says {want.get('dtype')}", reason="tensors")
        shape = list(actual["shape"])
        if len(shape) != 2 or shape[1] != width:
            raise PackError(f"{path}: tensor {role} has shape {shape}, expected [batch, {width}]", reason="tensors")
        want_shape = want.get("shape")
        if want_shape is not None and (not isinstance(want_shape, list) or len(want_shape) != 2 or want_shape[1] != shape[1]):
            raise PackError(f"{path}: tensor {role} has shape [batch, {shape[1]}], the manifest says {want_shape}", reason="tensors")
        scale, zero = actual["quantization"]
        if dtype is not np.float32:
            ws, wz = want.get("scale"), want.get("zero_point")
            if not isinstance(ws, (int, float)) or not isinstance(wz, int) or not np.isclose(scale, ws, rtol=1e-6) or zero != wz:
                raise PackError(f"{path}: tensor {role} quantisation ({scale}, {zero}) differs from the manifest ({ws}, {wz})", reason="tensors")
        return {"index": actual["index"], "dtype": dtype, "scale": float(scale), "zero_point": int(zero)}

    def self_test(self) -> None:
        """Run the pack's reference vectors; raise PackError when they do not give the
        expected outputs (within one quantisation step) or give NaN/Inf."""
        path = self.pack.path
        try:
            ref = np.load(__import__("io").BytesIO(self.pack.members["reference.npz"]), allow_pickle=False)
            feats, want_p, want_a = ref["features"], ref["out_probabilities"], ref["out_anomaly"]
        except KeyError as exc:
            raise PackError(f"{path}: reference.npz lacks {exc}", reason="self_test") from None
        except Exception as exc:
            raise PackError(f"{path}: reference.npz is unreadable: {exc}", reason="self_test") from None
        if feats.ndim != 2 or feats.shape[1] != len(self.feature_names) or len(feats) == 0:
            raise PackError(f"{path}: reference features have shape {feats.shape}, expected (n, {len(self.feature_names)})", reason="self_test")
        got = self.run(feats)
        for role, got_v, want_v in (("probabilities", got.probabilities, want_p), ("anomaly", got.anomaly, want_a)):
            if not np.all(np.isfinite(got_v)):
                raise PackError(f"{path}: self-test: the model gives NaN/Inf for {role}", reason="self_test")
            want_v = np.asarray(want_v, dtype=np.float64).reshape(got_v.shape)
            step = self._out[role]["scale"] or 1e-6
            worst = float(np.max(np.abs(got_v - want_v)))
            if worst > SELF_TEST_STEPS * step + 1e-6:
                raise PackError(f"{path}: self-test failed: {role} differs from the reference by {worst:.4g} "
                                f"(allowed {SELF_TEST_STEPS * step:.4g})", reason="self_test")

    # -- inference ----------------------------------------------------------------------------
    def normalise(self, features: np.ndarray) -> np.ndarray:
        f = np.array(features, dtype=np.float64, copy=True)
        f[:, self._log] = np.log(np.maximum(f[:, self._log], 1e-12))
        return (f - self._mean) / self._std

    def run(self, features: np.ndarray) -> ModelOutput:
        """Class probabilities and anomaly scores for rows of raw features (manifest order)."""
        x = self.normalise(np.atleast_2d(features))
        rows = len(x)
        if rows == 0:
            return ModelOutput(np.empty((0, len(self.labels))), np.empty(0), self.labels)
        batch = 1 << (rows - 1).bit_length()  # next power of two
        if batch != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [batch, x.shape[1]])
            self._interp.allocate_tensors()
            self._batch = batch
        q = np.zeros((batch, x.shape[1]), dtype=self._in["dtype"])
        q[:rows] = self._quantise(x, self._in)
        self._interp.set_tensor(self._in["index"], q)
        self._interp.invoke()
        p = self._dequantise(self._interp.get_tensor(self._out["probabilities"]["index"])[:rows], self._out["probabilities"])
        a = self._dequantise(self._interp.get_tensor(self._out["anomaly"]["index"])[:rows], self._out["anomaly"])
        return ModelOutput(p, a[:, 0], self.labels)

    @staticmethod
    def _quantise(x: np.ndarray, t: dict) -> np.ndarray:
        if t["dtype"] is np.float32:
            return x.astype(np.float32)
        info = np.iinfo(t["dtype"])
        return np.clip(np.round(x / t["scale"]) + t["zero_point"], info.min, info.max).astype(t["dtype"])

    @staticmethod
    def _dequantise(q: np.ndarray, t: dict) -> np.ndarray:
        if t["dtype"] is np.float32:
            return q.astype(np.float64)
        return (q.astype(np.float64) - t["zero_point"]) * t["scale"]
