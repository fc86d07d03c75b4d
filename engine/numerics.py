"""Per-layer numerics: find the layer where reduced precision (fp16) departs from the fp32 reference.

The model runs twice, in lock step, one segment of layers at a time:

- the reference: ONNX Runtime on this CPU in fp32, graph optimizations off, so
  every source node's output exists as the file describes it;
- a reduced-precision emulation, one of
  `fp16-storage`: ONNX Runtime again, arithmetic in fp32, but the weights, the
      inputs and every layer's outputs rounded to fp16 by a Cast pair
      (float -> float16 -> float) after the layer: catches overflow (|x| > 65504
      becomes inf) and storage rounding; fast;
  `fp16-compute`: the model cast to fp16 and run op by op by
      `onnx.reference.ReferenceEvaluator` on numpy float16 arrays: the arithmetic
      is numpy's half-precision arithmetic, so accumulation error shows too; slow.

Every output tensor of every layer is compared with the reference as soon as
both exist, then dropped unless a later layer reads it: memory stays bounded by
the tensors alive across a segment boundary plus one segment's outputs
(`segment_bytes`), not by the sum of all intermediates.

Neither mode is a device measurement: every figure is `emulated` and the
result names the emulation.  Figures obtained from a device (engine.bridge,
`intermediates`) are `measured`.  docs/numerics.md defines every figure.

Pure python + numpy + onnx + onnxruntime: never import Qt here.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.files import write_text_atomically
from engine.profile import MEASURED

# DESIGN.md "Measured versus estimated": the CPU reference imitating a device.
EMULATED = "emulated"
from engine.targets import ProfileSettings, TargetError

__all__ = ["MODES", "FP16_MAX", "NumericsSettings", "NumericsResult", "LayerNumerics", "TensorNumerics",
           "run_numerics", "compare_tensor", "NumericsError", "load_input_samples", "emulation_text",
           "estimate_seconds", "HISTOGRAM_EDGES", "SCHEMA"]

SCHEMA = "layerscope.numerics/1"
MODE_STORAGE, MODE_COMPUTE = "fp16-storage", "fp16-compute"
MODES = (MODE_STORAGE, MODE_COMPUTE)
PRECISIONS = ("fp16",)
FP16_MAX = 65504.0
# Below this, fp16 has no relative precision left (subnormals): relative errors are measured against it.
FP16_SMALLEST_NORMAL = 2.0 ** -14
DEFAULT_TOLERANCE = 1e-2
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# Relative-error histogram: decade edges 1e-8 .. 1e1, plus "exact" and "not finite" bins (docs/numerics.md).
HISTOGRAM_EDGES = tuple(10.0 ** k for k in range(-8, 2))
HISTOGRAM_LABELS = (("0",) + ("<1e-8",) + tuple(f"1e{k}..1e{k + 1}" for k in range(-8, 1)) + (">=10", "inf/NaN"))
_FLOAT_KINDS = (np.float16, np.float32, np.float64)

ProgressCallback = Callable[[int, int, str], None]


class NumericsError(Exception):
    """Settings or inputs that cannot be used; one readable line."""


# ============================================================================ settings and inputs

@dataclass(frozen=True)
class NumericsSettings:
    """How to compare.

    mode: fp16-storage or fp16-compute (module docstring).
    inputs: "random" (uniform [0, 1), seeded), "normal" (standard normal, seeded), or paths of
            .npz files; a .npz holds one sample (arrays named after the inputs), or several
            stacked on an extra leading axis.
    samples: how many generated inputs (seeds seed, seed+1, ...); ignored for .npz inputs.
    tolerance: a layer departs when its error (max |reduced - reference| / max |reference|)
               exceeds this, or when it produces inf/NaN the reference does not have.
    """

    mode: str = MODE_STORAGE
    precision: str = "fp16"
    inputs: tuple[str, ...] = ("random",)
    samples: int = 1
    seed: int = 0
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    size: Optional[tuple[int, int]] = None
    tolerance: float = DEFAULT_TOLERANCE
    threads: int = 0
    segment_bytes: int = DEFAULT_SEGMENT_BYTES

    def __post_init__(self):
        if self.mode not in MODES:
            raise NumericsError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise NumericsError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.inputs, str):
            object.__setattr__(self, "inputs", (self.inputs,))
        if not self.inputs:
            raise NumericsError("no inputs: give random, normal or .npz files")
        generated = [i for i in self.inputs if i in ("random", "normal")]
        if generated and len(self.inputs) > 1:
            raise NumericsError("inputs are either generated (random or normal) or .npz files, not both")
        if self.samples < 1:
            raise NumericsError(f"samples must be at least 1, got {self.samples}")
        if not (self.tolerance > 0):
            raise NumericsError(f"tolerance must be positive, got {self.tolerance}")
        if self.segment_bytes < 1:
            raise NumericsError(f"segment_bytes must be positive, got {self.segment_bytes}")

    @property
    def generated(self) -> bool:
        return self.inputs[0] in ("random", "normal")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "precision": self.precision, "inputs": list(self.inputs),
                "samples": self.samples, "seed": self.seed, "tolerance": self.tolerance,
                "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "size": list(self.size) if self.size else None, "threads": self.threads}


def load_input_samples(paths: Sequence[str], input_names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """The arrays of each .npz file, named after the model's inputs (stacked samples split later)."""
    samples: list[dict[str, np.ndarray]] = []
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except FileNotFoundError:
            raise NumericsError(f"inputs file {path}: no such file") from None
        except Exception as exc:
            raise NumericsError(f"inputs file {path} is not a readable .npz file ({exc})") from None
        if len(arrays) == 1 and len(input_names) == 1 and input_names[0] not in arrays:
            arrays = {input_names[0]: next(iter(arrays.values()))}
        missing = [name for name in input_names if name not in arrays]
        if missing:
            raise NumericsError(f"inputs file {path} has no array for input(s) {', '.join(missing)} "
                                f"(it has: {', '.join(arrays) or 'nothing'}); name the arrays after the model's "
                                "inputs")
        samples.append({name: arrays[name] for name in input_names})
    return samples


def _split_stacked(samples: list[dict[str, np.ndarray]], shapes: Mapping[str, tuple[int, ...]],
                   source: str) -> list[dict[str, np.ndarray]]:
    """Split samples whose arrays carry an extra leading axis (several samples in one .npz)."""
    result = []
    for sample in samples:
        extra = [name for name, array in sample.items() if array.ndim == len(shapes[name]) + 1]
        if extra and len(extra) == len(sample):
            counts = {sample[n].shape[0] for n in sample}
            if len(counts) != 1:
                raise NumericsError(f"{source}: the stacked arrays hold different numbers of samples "
                                    f"({', '.join(f'{n}: {sample[n].shape[0]}' for n in sample)})")
            result.extend({n: sample[n][i] for n in sample} for i in range(counts.pop()))
        else:
            result.append(sample)
    for index, sample in enumerate(result):
        for name, array in sample.items():
            if tuple(array.shape) != tuple(shapes[name]):
                raise NumericsError(f"{source}: sample {index + 1}, input '{name}' has shape "
                                    f"{'x'.join(map(str, array.shape))}; the model runs "
                                    f"{'x'.join(map(str, shapes[name]))}")
    return result


def _generated_samples(template: Mapping[str, np.ndarray], distribution: str, count: int, seed: int
                       ) -> list[dict[str, np.ndarray]]:
    """Seeded inputs: floats uniform [0, 1) or standard normal; integers 0/1; booleans fair coins."""
    samples = []
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        sample = {}
        for name, like in template.items():
            if like.dtype == np.bool_:
                sample[name] = rng.random(like.shape) < 0.5
            elif np.issubdtype(like.dtype, np.integer):
                sample[name] = rng.integers(0, 2, size=like.shape).astype(like.dtype)
            elif distribution == "normal":
                sample[name] = rng.standard_normal(like.shape).astype(like.dtype)
            else:
                sample[name] = rng.random(like.shape, dtype=np.float64).astype(like.dtype)
        samples.append(sample)
    return samples


def emulation_text(mode: str) -> str:
    """What a reduced-precision mode is, named in every result (docs/numerics.md)."""
    import onnxruntime as ort
    if mode == MODE_STORAGE:
        return (f"fp16-storage: ONNX Runtime {ort.__version__} on the CPU, arithmetic in fp32; weights, inputs "
                "and every layer's outputs rounded to fp16 (Cast float->float16->float after each layer)")
    return (f"fp16-compute: onnx {onnx.__version__} reference evaluator on numpy {np.__version__} float16 "
            "arrays: weights, inputs, every op's arithmetic steps and outputs in float16; dot products "
            "(Conv, ConvTranspose, MatMul, Gemm) accumulate in fp32 and round once, as numpy's float16 product "
            "does")


# Seconds per multiply-accumulate of the fp16-compute emulation, measured on the benchmark machine
# (benchmarks/bench_numerics.py); the estimate is labelled as such and the live progress refines it.
_COMPUTE_SECONDS_PER_MAC = 4e-9
_STORAGE_SECONDS_PER_MAC = 1e-10


def estimate_seconds(total_macs: int, mode: str, samples: int) -> float:
    """A rough duration (estimated: from the model's MACs and this tool's measured rates)."""
    rate = _COMPUTE_SECONDS_PER_MAC if mode == MODE_COMPUTE else _STORAGE_SECONDS_PER_MAC
    return max(0.5, total_macs * rate * samples)


# ============================================================================ comparing tensors

def _float_text(value: float):
    """JSON has no inf/NaN: those are written as the strings "inf", "-inf", "nan"."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _float_read(value) -> Optional[float]:
    return None if value is None else float(value)


class _TensorAccumulator:
    """Running sums for one tensor over several inputs."""

    __slots__ = ("name", "dtype", "shape", "elements", "max_abs", "max_rel", "max_ref", "max_low", "err2", "ref2",
                 "low2", "dot", "overflow", "underflow", "inf", "nan", "ref_nonfinite", "histogram", "samples")

    def __init__(self, name: str):
        self.name = name
        self.dtype, self.shape = "", ()
        self.elements = self.overflow = self.underflow = self.inf = self.nan = self.ref_nonfinite = 0
        self.max_abs = self.max_rel = self.max_ref = self.max_low = 0.0
        self.err2 = self.ref2 = self.low2 = self.dot = 0.0
        self.histogram = np.zeros(len(HISTOGRAM_LABELS), dtype=np.int64)
        self.samples = 0

    def add(self, reference: np.ndarray, reduced: np.ndarray) -> None:
        self.dtype, self.shape = str(reduced.dtype), tuple(reference.shape)
        self.samples += 1
        if reference.shape != reduced.shape:
            raise NumericsError(f"tensor '{self.name}': the reduced-precision run gave shape "
                                f"{'x'.join(map(str, reduced.shape))}, the reference "
                                f"{'x'.join(map(str, reference.shape))}")
        ref = np.asarray(reference, dtype=np.float64).ravel()
        low = np.asarray(reduced, dtype=np.float64).ravel()
        self.elements += ref.size
        error = np.abs(low - ref)
        if not np.isfinite(error).all():
            # Rare: inf/NaN somewhere.  Count what the reduced run broke, then compare the finite pairs.
            ref_finite, low_finite = np.isfinite(ref), np.isfinite(low)
            self.ref_nonfinite += int(ref.size - np.count_nonzero(ref_finite))
            broken = ref_finite & ~low_finite
            self.inf += int(np.count_nonzero(broken & np.isinf(low)))
            self.nan += int(np.count_nonzero(broken & np.isnan(low)))
            broken_count = int(np.count_nonzero(broken))
            if low_finite.any():
                self.max_low = max(self.max_low, float(np.abs(low[low_finite]).max()))
            self._add_overflow(np.abs(ref[ref_finite]))
            both = ref_finite & low_finite
            ref, low, error = ref[both], low[both], error[both]
        else:
            broken_count = 0
            if low.size:
                self.max_low = max(self.max_low, float(np.abs(low).max()))
            self._add_overflow(np.abs(ref))
        relative = error / np.maximum(np.abs(ref), FP16_SMALLEST_NORMAL)
        if broken_count:
            self.max_abs = self.max_rel = math.inf
        elif error.size:
            self.max_abs = max(self.max_abs, float(error.max()))
            self.max_rel = max(self.max_rel, float(relative.max()))
        # einsum, not np.dot: BLAS's threaded dot was 2.5x slower here on a busy machine.
        self.err2 += float(np.einsum("i,i->", error, error))
        self.ref2 += float(np.einsum("i,i->", ref, ref))
        self.low2 += float(np.einsum("i,i->", low, low))
        self.dot += float(np.einsum("i,i->", ref, low))
        # Bins: exact, then (0, 1e-8), [1e-8, 1e-7) ... [1, 10), >= 10, then inf/NaN.  One vectorised
        # comparison per edge is several times faster than searchsorted over the data.
        at_least = [int(np.count_nonzero(relative > 0))] + [int(np.count_nonzero(relative >= edge))
                                                             for edge in HISTOGRAM_EDGES]
        self.histogram[0] += relative.size - at_least[0]
        self.histogram[1:-2] += np.array(at_least[:-1]) - np.array(at_least[1:])
        self.histogram[-2] += at_least[-1]
        self.histogram[-1] += broken_count

    def _add_overflow(self, magnitude: np.ndarray) -> None:
        if not magnitude.size:
            return
        self.max_ref = max(self.max_ref, float(magnitude.max()))
        self.overflow += int(np.count_nonzero(magnitude > FP16_MAX))
        tiny = magnitude[magnitude < FP16_SMALLEST_NORMAL]
        self.underflow += int(np.count_nonzero((tiny > 0) & (tiny.astype(np.float16) == 0)))

    def result(self, kind: str) -> "TensorNumerics":
        broken = self.inf + self.nan
        scale = max(self.max_ref, FP16_SMALLEST_NORMAL)
        error = math.inf if broken else self.max_abs / scale
        if broken:
            cosine, snr = math.nan, -math.inf
        else:
            norms = math.sqrt(self.ref2) * math.sqrt(self.low2)
            if self.err2 == 0:
                cosine = 1.0  # identical (the sums' own rounding would say 0.9999999999999998)
            else:
                cosine = min(1.0, self.dot / norms) if norms > 0 else 0.0
            snr = math.inf if self.err2 == 0 else (10 * math.log10(self.ref2 / self.err2) if self.ref2 > 0
                                                   else -math.inf)
        count = max(self.elements, 1)
        return TensorNumerics(self.name, self.dtype, self.shape, self.elements, self.samples, self.max_abs,
                              self.max_rel, error, cosine, snr, self.overflow / count, self.underflow / count,
                              self.inf, self.nan, self.ref_nonfinite, self.max_ref, self.max_low,
                              tuple(int(c) for c in self.histogram), kind)


def compare_tensor(name: str, reference: np.ndarray, reduced: np.ndarray, kind: str = EMULATED) -> "TensorNumerics":
    """The figures of one tensor pair (docs/numerics.md)."""
    accumulator = _TensorAccumulator(name)
    accumulator.add(reference, reduced)
    return accumulator.result(kind)


# ============================================================================ results

@dataclass(frozen=True)
class TensorNumerics:
    """One tensor's figures, aggregated over the inputs compared.

    error: max |reduced - reference| / max |reference| (the headline figure; inf when the
           reduced run produced inf/NaN the reference does not have).
    max_rel_error: elementwise max of |reduced - reference| / max(|reference|, 2^-14).
    overflow_share: share of reference values with |x| > 65504 (inf in fp16).
    underflow_share: share of non-zero reference values that are zero in fp16.
    """

    name: str
    dtype: str
    shape: tuple
    elements: int
    samples: int
    max_abs_error: float
    max_rel_error: float
    error: float
    cosine: float
    snr_db: float
    overflow_share: float
    underflow_share: float
    inf_count: int
    nan_count: int
    reference_nonfinite: int
    largest_reference: float
    largest_reduced: float
    histogram: tuple[int, ...]
    kind: str = EMULATED

    @property
    def broken(self) -> bool:
        return self.inf_count + self.nan_count > 0

    @property
    def overflows(self) -> bool:
        return self.overflow_share > 0 or self.inf_count > 0

    def to_json_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "elements": self.elements,
                "samples": self.samples, "max_abs_error": _float_text(self.max_abs_error),
                "max_rel_error": _float_text(self.max_rel_error), "error": _float_text(self.error),
                "cosine": _float_text(self.cosine), "snr_db": _float_text(self.snr_db),
                "overflow_share": self.overflow_share, "underflow_share": self.underflow_share,
                "inf_count": self.inf_count, "nan_count": self.nan_count,
                "reference_nonfinite": self.reference_nonfinite,
                "largest_reference": _float_text(self.largest_reference),
                "largest_reduced": _float_text(self.largest_reduced), "histogram": list(self.histogram),
                "kind": self.kind}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "TensorNumerics":
        return cls(data["name"], data.get("dtype", ""), tuple(data.get("shape", ())), int(data["elements"]),
                   int(data.get("samples", 1)), _float_read(data["max_abs_error"]),
                   _float_read(data["max_rel_error"]), _float_read(data["error"]), _float_read(data["cosine"]),
                   _float_read(data["snr_db"]), float(data["overflow_share"]), float(data["underflow_share"]),
                   int(data["inf_count"]), int(data["nan_count"]), int(data.get("reference_nonfinite", 0)),
                   _float_read(data["largest_reference"]), _float_read(data["largest_reduced"]),
                   tuple(int(c) for c in data["histogram"]), data.get("kind", EMULATED))


@dataclass(frozen=True)
class LayerNumerics:
    """A layer (node) and its float outputs.  The layer's figures are its worst output's."""

    node_id: str
    op_type: str
    tensors: tuple[TensorNumerics, ...]
    departs: bool
    kind: str = EMULATED
    note: str = ""

    def _worst(self, attribute: str, largest: bool = True) -> float:
        values = [getattr(t, attribute) for t in self.tensors]
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return math.nan
        return max(values) if largest else min(values)

    @property
    def error(self) -> float:
        return self._worst("error")

    @property
    def max_abs_error(self) -> float:
        return self._worst("max_abs_error")

    @property
    def max_rel_error(self) -> float:
        return self._worst("max_rel_error")

    @property
    def cosine(self) -> float:
        return self._worst("cosine", largest=False)

    @property
    def snr_db(self) -> float:
        return self._worst("snr_db", largest=False)

    @property
    def overflow_share(self) -> float:
        return self._worst("overflow_share")

    @property
    def underflow_share(self) -> float:
        return self._worst("underflow_share")

    @property
    def largest_reference(self) -> float:
        return self._worst("largest_reference")

    @property
    def inf_count(self) -> int:
        return sum(t.inf_count for t in self.tensors)

    @property
    def nan_count(self) -> int:
        return sum(t.nan_count for t in self.tensors)

    @property
    def overflows(self) -> bool:
        return any(t.overflows for t in self.tensors)

    @property
    def histogram(self) -> tuple[int, ...]:
        return tuple(int(sum(column)) for column in zip(*(t.histogram for t in self.tensors)))

    def to_json_dict(self) -> dict:
        return {"node_id": self.node_id, "op_type": self.op_type, "departs": self.departs, "kind": self.kind,
                "note": self.note, "error": _float_text(self.error), "tensors": [t.to_json_dict() for t in self.tensors]}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "LayerNumerics":
        return cls(data["node_id"], data.get("op_type", ""),
                   tuple(TensorNumerics.from_json_dict(t) for t in data.get("tensors", ())),
                   bool(data.get("departs")), data.get("kind", EMULATED), data.get("note", ""))


@dataclass(frozen=True)
class NumericsResult:
    """The comparison of a model in reduced precision against its fp32 reference, layer by layer.

    layers: node id -> figures, in execution order; only layers with a float output are compared
    (the others are listed in `not_compared` with the reason).
    first_departing: the first layer (execution order) whose error exceeds the tolerance or that
    produces inf/NaN; first_overflow: the first layer whose values exceed the fp16 range.
    kind: `emulated` (a CPU emulation, named in `emulation`) or `measured` (a device's outputs).
    """

    model_path: str
    mode: str
    precision: str
    kind: str
    emulation: str
    reference: str
    settings: Mapping
    inputs: str
    samples_compared: int
    layers: Mapping[str, LayerNumerics]
    first_departing: Optional[str]
    first_overflow: Optional[str]
    tolerance: float
    complete: bool
    error: str = ""
    warnings: tuple[str, ...] = ()
    not_compared: Mapping[str, str] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    device: Mapping = field(default_factory=dict)
    hints: tuple = ()

    def layer(self, node_id: str) -> Optional[LayerNumerics]:
        return self.layers.get(node_id)

    def worst(self, count: int = 10) -> list[LayerNumerics]:
        ranked = [l for l in self.layers.values() if not math.isnan(l.error)]
        ranked.sort(key=lambda l: l.error, reverse=True)
        return ranked[:count]

    def overflowing_tensors(self) -> list[str]:
        return [t.name for layer in self.layers.values() for t in layer.tensors if t.overflows]

    def to_json_dict(self) -> dict:
        return {"schema": SCHEMA, "model_path": self.model_path, "mode": self.mode, "precision": self.precision,
                "kind": self.kind, "emulation": self.emulation, "reference": self.reference,
                "settings": dict(self.settings), "inputs": self.inputs, "samples_compared": self.samples_compared,
                "tolerance": self.tolerance, "first_departing": self.first_departing,
                "first_overflow": self.first_overflow, "complete": self.complete, "error": self.error,
                "warnings": list(self.warnings), "not_compared": dict(self.not_compared),
                "seconds": dict(self.seconds), "device": dict(self.device), "hints": list(self.hints),
                "histogram_bins": list(HISTOGRAM_LABELS),
                "layers": [layer.to_json_dict() for layer in self.layers.values()]}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> "NumericsResult":
        if data.get("schema") != SCHEMA:
            raise NumericsError(f"not a {SCHEMA} document (schema: {data.get('schema')!r})")
        layers = {l["node_id"]: LayerNumerics.from_json_dict(l) for l in data.get("layers", ())}
        return cls(data.get("model_path", ""), data["mode"], data.get("precision", "fp16"), data["kind"],
                   data.get("emulation", ""), data.get("reference", ""), data.get("settings", {}),
                   data.get("inputs", ""), int(data.get("samples_compared", 0)), layers,
                   data.get("first_departing"), data.get("first_overflow"), float(data.get("tolerance", 0)),
                   bool(data.get("complete")), data.get("error", ""), tuple(data.get("warnings", ())),
                   data.get("not_compared", {}), data.get("seconds", {}), data.get("device", {}),
                   tuple(data.get("hints", ())))

    def save_json(self, path) -> Path:
        return write_text_atomically(path, json.dumps(self.to_json_dict(), indent=1))

    @classmethod
    def load_json(cls, path) -> "NumericsResult":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NumericsError(f"{path}: not a readable numerics JSON file ({exc})") from None
        return cls.from_json_dict(data)


# ============================================================================ model surgery

def _reads(node: onnx.NodeProto) -> set[str]:
    from engine.targets.cpu import _subgraph_references
    return {n for n in node.input if n} | _subgraph_references(node)


def _plan_segments(nodes: Sequence[onnx.NodeProto], output_bytes: Mapping[str, Optional[int]],
                   budget: int) -> list[tuple[int, int]]:
    """Consecutive node ranges whose outputs together stay under `budget` bytes (at least one node each)."""
    segments, start, used = [], 0, 0
    for index, node in enumerate(nodes):
        size = output_bytes.get(node.name) or 0
        if index > start and used + size > budget:
            segments.append((start, index))
            start, used = index, 0
        used += size
    if start < len(nodes):
        segments.append((start, len(nodes)))
    return segments


_NUMPY_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: onnx.TensorProto.FLOAT, np.float16: onnx.TensorProto.FLOAT16, np.float64: onnx.TensorProto.DOUBLE,
    np.int64: onnx.TensorProto.INT64, np.int32: onnx.TensorProto.INT32, np.int16: onnx.TensorProto.INT16,
    np.int8: onnx.TensorProto.INT8, np.uint8: onnx.TensorProto.UINT8, np.uint16: onnx.TensorProto.UINT16,
    np.uint32: onnx.TensorProto.UINT32, np.uint64: onnx.TensorProto.UINT64, np.bool_: onnx.TensorProto.BOOL,
}.items()}


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    elem = _NUMPY_TO_ONNX.get(array.dtype)
    if elem is None:
        raise NumericsError(f"tensor '{name}' has type {array.dtype}, which the numerics comparison cannot pass "
                            "between segments")
    return helper.make_tensor_value_info(name, elem, list(array.shape))


def _round_fp16(array: np.ndarray) -> np.ndarray:
    """Rounded to fp16 and back (storage rounding); non-float arrays unchanged."""
    if array.dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):
            return array.astype(np.float16).astype(array.dtype)
    return array


def _with_storage_casts(segment: onnx.ModelProto, float_outputs: Iterable[str]) -> onnx.ModelProto:
    """A segment whose float outputs pass through Cast float->float16->float, weights rounded to fp16.

    The producing node writes `<name>::fp32`; the pair writes `<name>` again, so
    readers and the segment's outputs see the rounded tensor.  Inputs arrive
    already rounded (the previous segment rounded them, or the caller did).
    """
    model = onnx.ModelProto()
    model.CopyFrom(segment)
    graph = model.graph
    float_outputs = set(float_outputs)
    for tensor in graph.initializer:
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            tensor.CopyFrom(numpy_helper.from_array(_round_fp16(numpy_helper.to_array(tensor)), tensor.name))
    nodes = []
    for node in graph.node:
        casts = []
        for position, name in enumerate(node.output):
            if name not in float_outputs:
                continue
            original = f"{name}::fp32"
            node.output[position] = original
            elem = onnx.TensorProto.FLOAT
            casts.append(helper.make_node("Cast", [original], [f"{name}::fp16"], name=f"{node.name}::to_fp16",
                                          to=onnx.TensorProto.FLOAT16))
            casts.append(helper.make_node("Cast", [f"{name}::fp16"], [name], name=f"{node.name}::from_fp16",
                                          to=elem))
        nodes.append(node)
        nodes.extend(casts)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _fp16_compute_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float weights, constants, casts and declared types in float16 (for numpy float16)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    _cast_graph_to_fp16(model.graph)
    return model


# Inputs that ONNX requires in fp32 whatever the data type (sizes and coordinates, not data).
_KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_FLOAT_ELEMS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)


def _cast_graph_to_fp16(graph: onnx.GraphProto) -> None:
    keep = {node.input[i] for node in graph.node for (op, i) in _KEEP_FP32_INPUTS
            if node.op_type == op and len(node.input) > i and node.input[i]}
    for tensor in graph.initializer:
        if tensor.data_type in _FLOAT_ELEMS and tensor.name not in keep:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type in _FLOAT_ELEMS and value.name not in keep:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del graph.value_info[:]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _cast_graph_to_fp16(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    _cast_graph_to_fp16(sub)
        if node.op_type == "Cast":
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i in _FLOAT_ELEMS:
                    attribute.i = onnx.TensorProto.FLOAT16
        elif node.op_type in ("Constant", "ConstantOfShape") and not any(o in keep for o in node.output):
            found = False
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type in _FLOAT_ELEMS:
                    attribute.t.CopyFrom(numpy_helper.from_array(
                        numpy_helper.to_array(attribute.t).astype(np.float16), attribute.t.name))
                    found = True
                elif attribute.name == "value":
                    found = True
                elif attribute.name in ("value_float", "value_floats"):
                    values = np.array(attribute.f if attribute.name == "value_float" else list(attribute.floats),
                                      dtype=np.float16)
                    node.attribute.remove(attribute)
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))
                    found = True
                    break
            if node.op_type == "ConstantOfShape" and not found:  # default: float32 zero
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                    np.zeros(1, dtype=np.float16))))


# ============================================================================ runners

class _OrtSegments:
    """A model run one segment at a time by ONNX Runtime (fp32, or with fp16 storage casts).

    Large weights are not in the segment models: they are fed with each run from
    `weights` (numpy arrays ORT reads in place), so a weight lives once in memory
    instead of once per protobuf, serialized copy and session.
    """

    def __init__(self, proto: onnx.ModelProto, segments: Sequence[tuple[int, int]], threads: int,
                 storage_fp16: bool, weights: Mapping[str, np.ndarray]):
        self.proto = proto
        self.segments = segments
        self.threads = threads
        self.storage_fp16 = storage_fp16
        self.weights = weights
        self.sessions: dict[int, tuple] = {}
        self.initializers = {t.name: t for t in proto.graph.initializer}

    def _build(self, index: int, live: Mapping[str, np.ndarray], float_outputs: Iterable[str]):
        import onnxruntime as ort
        start, end = self.segments[index]
        nodes = self.proto.graph.node[start:end]
        produced = {o for n in nodes for o in n.output if o}
        reads = set().union(*(_reads(n) for n in nodes))
        inputs = sorted(name for name in reads if name not in produced and name not in self.initializers
                        and name in live)
        weights = sorted(name for name in reads if name in self.weights and name not in produced)
        missing = [name for name in reads if name not in produced and name not in self.initializers
                   and name not in live and name not in self.weights]
        if missing:
            raise NumericsError(f"nodes {nodes[0].name}..{nodes[-1].name} read {', '.join(sorted(missing)[:3])}, "
                                "which nothing produced before them")
        outputs = [o for n in nodes for o in n.output if o]
        graph = helper.make_graph(
            [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes], f"segment{index}",
            [_value_info(name, live[name]) for name in inputs]
            + [_value_info(name, self.weights[name]) for name in weights],
            [helper.make_empty_tensor_value_info(name) for name in outputs],
            initializer=[self.initializers[name] for name in sorted(reads) if name in self.initializers])
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        model.ir_version = self.proto.ir_version
        model.functions.extend(self.proto.functions)
        if self.storage_fp16:
            model = _with_storage_casts(model, float_outputs)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Fusions would skip intermediate tensors and remove the Cast pairs.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Every segment session would otherwise keep an arena the size of its outputs after its run,
        # which is the sum of all intermediates again (ResNet-50: 1.2 GB peak with arenas, see
        # docs/benchmarks.md); without them a run's buffers are freed when the outputs are dropped.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            from engine.targets.cpu import _short_ort_message
            raise NumericsError(f"ONNX Runtime cannot run nodes {nodes[0].name}..{nodes[-1].name}: "
                                f"{_short_ort_message(exc)}") from None
        del model
        self.sessions[index] = (session, inputs, weights, outputs)
        return self.sessions[index]

    def run(self, index: int, live: Mapping[str, np.ndarray],
            float_outputs: Iterable[str] = ()) -> dict[str, np.ndarray]:
        session, inputs, weights, outputs = self.sessions.get(index) or self._build(index, live, float_outputs)
        feed = {name: live[name] for name in inputs}
        feed.update((name, self.weights[name]) for name in weights)
        try:
            values = session.run(outputs, feed)
        except Exception as exc:
            from engine.targets.cpu import _short_ort_message
            start, end = self.segments[index]
            raise NumericsError(f"the run of nodes {self.proto.graph.node[start].name}.."
                                f"{self.proto.graph.node[end - 1].name} failed: {_short_ort_message(exc)}") from None
        return dict(zip(outputs, values))


class _Fp16Evaluator:
    """The fp16 model run op by op by onnx's reference evaluator on numpy float16 arrays."""

    def __init__(self, proto: onnx.ModelProto, weights: Mapping[str, np.ndarray]):
        from onnx.reference import ReferenceEvaluator
        from engine.numerics_kernels import FP16_KERNELS
        self.model = _fp16_compute_model(proto)
        try:
            self.evaluator = ReferenceEvaluator(self.model, new_ops=FP16_KERNELS)
        except Exception as exc:
            raise NumericsError(f"the reference evaluator cannot load the fp16 model ({type(exc).__name__}: "
                                f"{exc}); use mode fp16-storage") from None
        self.nodes = self.evaluator.rt_nodes_
        self.initializers = dict(self.evaluator.rt_inits_)
        self.initializers.update((name, value.astype(np.float16) if value.dtype in (np.float32, np.float64)
                                  else value) for name, value in weights.items())
        self.promoted: dict[str, str] = {}

    def run_node(self, index: int, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        node = self.nodes[index]
        proto = self.model.graph.node[index]
        inputs = [values[name] if name in values else self.initializers.get(name) for name in node.input]
        try:
            with np.errstate(all="ignore"):
                if node.need_context():
                    context = {**self.initializers, **values}
                    outputs = node.run(*inputs, context=context)
                else:
                    outputs = node.run(*inputs)
        except Exception as exc:
            raise NumericsError(f"fp16-compute: node '{proto.name}' (op {proto.op_type}) failed in the reference "
                                f"evaluator: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                                "use mode fp16-storage for this model") from None
        result = {}
        for name, value in zip(proto.output, outputs):
            if not name:
                continue
            value = np.asarray(value)
            if value.dtype in (np.float32, np.float64):
                # numpy promoted (an fp32 operand the cast missed): keep storage fp16, and say so.
                self.promoted[proto.name] = str(value.dtype)
                with np.errstate(over="ignore"):
                    value = value.astype(np.float16)
            result[name] = value
        return result


# ============================================================================ the run

@dataclass
class _Plan:
    proto: onnx.ModelProto
    node_ids: list[str]
    op_types: list[str]
    segments: list[tuple[int, int]]
    last_reader: dict[str, int]
    graph_outputs: set[str]
    costs: list[float]


def _make_plan(proto: onnx.ModelProto, analysis, budget: int) -> _Plan:
    nodes = list(proto.graph.node)
    output_bytes = {}
    costs = []
    for node in nodes:
        metrics = analysis.nodes.get(node.name)
        output_bytes[node.name] = metrics.output_bytes if metrics else None
        costs.append(float((metrics.flops or 0) if metrics else 0) + float((metrics.output_bytes or 0) if metrics else 0))
    last_reader: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in _reads(node):
            last_reader[name] = index
    total = sum(costs) or 1.0
    return _Plan(proto, [n.name for n in nodes], [n.op_type for n in nodes],
                 _plan_segments(nodes, output_bytes, budget), last_reader, {o.name for o in proto.graph.output},
                 [c / total for c in costs])


def _prune(values: dict[str, np.ndarray], plan: _Plan, after: int) -> None:
    """Drop tensors no node after position `after` reads (graph outputs included: compared already)."""
    for name in [n for n in values if plan.last_reader.get(n, -1) <= after]:
        del values[name]


def run_numerics(model_path, settings: Optional[NumericsSettings] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[threading.Event] = None
                 ) -> NumericsResult:
    """Compare every layer of the model in reduced precision with the fp32 reference.

    Cancel (checked between layers) or a failing layer stop the run; the layers
    compared so far are kept (complete=False, error says why).  Raises
    NumericsError / TargetError / ModelLoadError for a model or inputs that cannot be used.
    """
    settings = settings or NumericsSettings()
    from engine.targets.cpu import CpuTarget
    import onnxruntime as ort

    started = time.perf_counter()
    path = Path(model_path)
    npz_samples = None
    shapes = dict(settings.input_shapes)
    if not settings.generated:
        ranks = _input_ranks(path)
        npz_samples = load_input_samples(settings.inputs, list(ranks))
        for name, array in npz_samples[0].items():
            stacked = ranks[name] is not None and array.ndim == ranks[name] + 1
            shapes.setdefault(name, array.shape[1:] if stacked else array.shape)
    target = CpuTarget()
    try:
        target.prepare(path, ProfileSettings(runs=1, warmup=0, threads=settings.threads, seed=settings.seed,
                                             input_shapes=shapes, size=settings.size))
        analysis = target.analysis
        template = target.inputs
        input_shapes = {k: tuple(v.shape) for k, v in template.items()}
        if npz_samples is None:
            samples = _generated_samples(template, settings.inputs[0], settings.samples, settings.seed)
            inputs_text = (f"{settings.samples} generated input(s), "
                           + ("uniform [0, 1)" if settings.inputs[0] == "random" else "standard normal")
                           + f", seeds {settings.seed}..{settings.seed + settings.samples - 1}")
        else:
            samples = _split_stacked(npz_samples, input_shapes, ", ".join(settings.inputs))
            samples = [{k: np.ascontiguousarray(v.astype(template[k].dtype, copy=False)) for k, v in s.items()}
                       for s in samples]
            inputs_text = f"{len(samples)} input(s) from {', '.join(settings.inputs)}"
        proto = onnx.load(str(target.session_model_path))
        folded = target.folded_node_ids
        warnings = list(target.load_warnings)
    finally:
        target.close()
    plan = _make_plan(proto, analysis, settings.segment_bytes)
    weights = _take_weights(proto)
    reference_runner = _OrtSegments(proto, plan.segments, settings.threads, False, weights)
    storage_runner = _OrtSegments(proto, plan.segments, settings.threads, True,
                                  {name: _round_fp16(value) for name, value in weights.items()}) \
        if settings.mode == MODE_STORAGE else None
    evaluator = _Fp16Evaluator(proto, weights) if settings.mode == MODE_COMPUTE else None
    result_kind = EMULATED
    accumulators: dict[str, dict[str, _TensorAccumulator]] = {}
    not_compared: dict[str, str] = {node_id: "constant (folded into a weight)" for node_id in folded}
    error, seconds_reference, seconds_reduced = "", 0.0, 0.0
    samples_done = 0
    total_units = 1000 * len(samples)
    clock = time.perf_counter

    def report(sample_index: int, node_index: int) -> None:
        if progress is None:
            return
        done_share = sum(plan.costs[:node_index + 1])
        progress(int(1000 * sample_index + 1000 * min(1.0, done_share)), total_units,
                 f"input {sample_index + 1}/{len(samples)}: {plan.node_ids[node_index]}")

    try:
        for sample_index, sample in enumerate(samples):
            reference_live = dict(sample)
            reduced_live = {k: (v.astype(np.float16) if evaluator is not None and v.dtype in (np.float32, np.float64)
                                else _round_fp16(v)) for k, v in sample.items()}
            for segment_index, (start, end) in enumerate(plan.segments):
                if cancel is not None and cancel.is_set():
                    raise _Stopped("cancelled")
                tick = clock()
                reference = reference_runner.run(segment_index, reference_live)
                seconds_reference += clock() - tick
                float_outputs = [n for n, v in reference.items() if v.dtype in (np.float32, np.float64)]
                tick = clock()
                if storage_runner is not None:
                    reduced = storage_runner.run(segment_index, reduced_live, float_outputs)
                    seconds_reduced += clock() - tick
                    for index in range(start, end):
                        _compare_node(proto.graph.node[index], reference, reduced, accumulators, not_compared)
                    report(sample_index, end - 1)
                else:
                    for index in range(start, end):
                        if cancel is not None and cancel.is_set():
                            raise _Stopped("cancelled")
                        tick = clock()
                        reduced = evaluator.run_node(index, reduced_live)
                        seconds_reduced += clock() - tick
                        reduced_live.update(reduced)
                        _compare_node(proto.graph.node[index], reference, reduced, accumulators, not_compared)
                        _prune(reduced_live, plan, index)
                        report(sample_index, index)
                    reduced = {}
                reference_live.update(reference)
                _prune(reference_live, plan, end - 1)
                if storage_runner is not None:
                    reduced_live.update(reduced)
                    _prune(reduced_live, plan, end - 1)
                del reference, reduced
            samples_done += 1
    except _Stopped as stop:
        error = str(stop)
    except KeyboardInterrupt:
        error = "interrupted"
    except NumericsError as exc:
        if not accumulators:
            raise
        error = str(exc)
    if evaluator is not None and evaluator.promoted:
        names = sorted(evaluator.promoted)
        warnings.append(f"{len(names)} node(s) computed in fp32 in the fp16 run (numpy promoted a float32 "
                        f"operand; outputs were rounded to fp16): {', '.join(names[:5])}"
                        + (" ..." if len(names) > 5 else ""))
    layers: dict[str, LayerNumerics] = {}
    first_departing = first_overflow = None
    for node_id, op_type in zip(plan.node_ids, plan.op_types):
        tensors = accumulators.get(node_id)
        if not tensors:
            continue
        figures = tuple(acc.result(result_kind) for acc in tensors.values())
        departs = any(t.broken or t.error > settings.tolerance for t in figures)
        note = ""
        if evaluator is not None and node_id in evaluator.promoted:
            note = f"computed in {evaluator.promoted[node_id]} (numpy promotion), output rounded to fp16"
        layer = LayerNumerics(node_id, op_type, figures, departs, result_kind, note)
        layers[node_id] = layer
        if departs and first_departing is None:
            first_departing = node_id
        if layer.overflows and first_overflow is None:
            first_overflow = node_id
    result = NumericsResult(
        model_path=str(path), mode=settings.mode, precision=settings.precision, kind=result_kind,
        emulation=emulation_text(settings.mode),
        reference=f"fp32, ONNX Runtime {ort.__version__} CPU, graph optimizations off",
        settings=settings.to_dict() | {"input_shapes": {k: list(v) for k, v in input_shapes.items()},
                                       "segments": len(plan.segments)},
        inputs=inputs_text, samples_compared=samples_done, layers=layers, first_departing=first_departing,
        first_overflow=first_overflow, tolerance=settings.tolerance, complete=not error, error=error,
        warnings=tuple(warnings), not_compared=not_compared,
        seconds={"reference": round(seconds_reference, 4), "reduced": round(seconds_reduced, 4),
                 "total": round(time.perf_counter() - started, 4)})
    return replace(result, hints=tuple(numerics_hints(result, analysis.graph)))


# Initializers above this size are fed to the segments as arrays; smaller ones (shapes, axes, scales)
# stay in the graph, where some kernels expect constants.
_WEIGHT_BYTES = 4096


def _take_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The large initializers as numpy arrays, removed from `proto`."""
    weights, kept = {}, []
    for tensor in proto.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.nbytes > _WEIGHT_BYTES:
            weights[tensor.name] = array
        else:
            kept.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    return weights


class _Stopped(Exception):
    pass


def _input_ranks(path: Path) -> dict[str, Optional[int]]:
    """The model's inputs (weights excluded) and their ranks (None: no shape), read without the weights."""
    from engine.ir import ModelLoadError
    from engine.targets.cpu import _check_onnx_file, _proto_dims
    if not path.exists():
        raise ModelLoadError(str(path), "no such file or directory")
    _check_onnx_file(path)
    try:
        header = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(str(path), f"could not be read as onnx: {type(exc).__name__}: {exc}") from None
    weights = {t.name for t in header.graph.initializer}
    ranks = {}
    for value in header.graph.input:
        if value.name not in weights:
            dims = _proto_dims(value)
            ranks[value.name] = None if dims is None else len(dims)
    return ranks


def _compare_node(node: onnx.NodeProto, reference: Mapping[str, np.ndarray], reduced: Mapping[str, np.ndarray],
                  accumulators: dict, not_compared: dict) -> None:
    compared = False
    for name in node.output:
        if not name or name not in reference or name not in reduced:
            continue
        ref = reference[name]
        if ref.dtype not in (np.float32, np.float64):
            continue
        tensors = accumulators.setdefault(node.name, {})
        accumulator = tensors.get(name) or tensors.setdefault(name, _TensorAccumulator(name))
        accumulator.add(ref, reduced[name])
        compared = True
    if not compared and node.name not in accumulators:
        dtypes = sorted({str(reference[n].dtype) for n in node.output if n in reference})
        not_compared.setdefault(node.name, f"no float output ({', '.join(dtypes) or 'no output'})")
    else:
        not_compared.pop(node.name, None)


# ============================================================================ hints

# Ops whose sums or exponentials overflow first when their input is large (the usual fp16 failures).
_NORMALISATION_OPS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "LayerNormalization",
                      "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Softmax", "LogSoftmax",
                      "Pow", "Sqrt", "Exp"}
_WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_KEEP_FP32 = ("keep it in fp32 on Core ML with coremltools' op selection "
              "(ct.convert(..., compute_precision=ct.transform.FP16ComputePrecision(op_selector=...)) "
              "returning False for this op)")


def numerics_hints(result: NumericsResult, graph=None) -> list[dict]:
    """What to try where fp16 breaks the model: {rule, severity, message, node_ids, kind}.

    `graph` (engine.ir.Graph) lets a hint name the layer that feeds the broken
    one (whose weights can take a scale) and the normalisation that follows.
    """
    hints = []
    producers = graph.producers() if graph is not None else {}
    consumers = graph.consumers() if graph is not None else {}

    def neighbours(node_id: str) -> tuple[Optional[str], Optional[str]]:
        if graph is None or node_id not in graph.nodes_by_id:
            return None, None
        node = graph.node(node_id)
        weighted = node_id if node.op_type in _WEIGHTED_OPS else None
        stack, seen = [node], set()
        while stack and weighted is None:  # nearest weighted layer upstream (its weights can absorb a scale)
            current = stack.pop(0)
            for name in current.inputs:
                producer = producers.get(name)
                if producer is not None and producer.id not in seen:
                    seen.add(producer.id)
                    if producer.op_type in _WEIGHTED_OPS:
                        weighted = producer.id
                        break
                    stack.append(producer)
        normalisation = node_id if node.op_type in _NORMALISATION_OPS else None
        stack, seen = [node], set()
        while stack and normalisation is None and len(seen) < 16:  # the normalisation downstream, if near
            current = stack.pop(0)
            for name in current.outputs:
                for consumer in consumers.get(name, ()):
                    if consumer.id not in seen:
                        seen.add(consumer.id)
                        if consumer.op_type in _NORMALISATION_OPS:
                            normalisation = consumer.id
                            break
                        stack.append(consumer)
        return weighted, normalisation

    def fixes(node_id: str) -> tuple[str, list[str]]:
        weighted, normalisation = neighbours(node_id)
        named = [node_id]
        parts = [_KEEP_FP32]
        if normalisation is not None:
            parts.append(f"rescale the values before the normalisation '{normalisation}' (divide by a constant "
                         "first, so that its sums and exponentials stay in range)")
            named.append(normalisation)
        if weighted is not None:
            parts.append(f"fold the scale into the weights of '{weighted}' so that the activations stay small")
            named.append(weighted)
        return "; ".join(parts), list(dict.fromkeys(named))

    overflow = result.layers.get(result.first_overflow) if result.first_overflow else None
    if overflow is not None:
        text, named = fixes(overflow.node_id)
        hints.append({"rule": "fp16_overflow", "severity": "high", "node_ids": named, "kind": result.kind,
                      "message": f"'{overflow.node_id}' ({overflow.op_type}) is the first layer whose values leave "
                                 f"the fp16 range: the reference reaches {overflow.largest_reference:.4g} (fp16 "
                                 f"holds up to {FP16_MAX:.0f}), which is inf in fp16. Usual fixes: {text}."})
    departing = result.layers.get(result.first_departing) if result.first_departing else None
    if departing is not None and departing is not overflow:
        text, named = fixes(departing.node_id)
        peaks = [result.layers[producers[name].id].largest_reference
                 for name in (graph.node(departing.node_id).inputs if graph is not None else ())
                 if name in producers and producers[name].id in result.layers]
        where = f"its inputs reach {max(peaks):.4g}" if peaks else \
            f"its values reach {departing.largest_reference:.4g}"
        hints.append({"rule": "fp16_precision", "severity": "high" if departing.error > 0.1 else "medium",
                      "node_ids": named, "kind": result.kind,
                      "message": f"'{departing.node_id}' ({departing.op_type}) is the first layer that departs from "
                                 f"the fp32 reference (error {departing.error:.3g}, tolerance {result.tolerance:g}) "
                                 "without overflowing: fp16 keeps 11 significant bits, so large values close to "
                                 f"each other lose their differences ({where}). Usual fixes: {text}."})
    return hints
