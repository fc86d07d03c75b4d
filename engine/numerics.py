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

The comparison itself (model surgery, runners) is engine.numerics_run, imported
when a run starts so that opening the app does not import onnx.  Pure python +
numpy (+ onnx and onnxruntime there): never import Qt here.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from engine.files import write_text_atomically

# DESIGN.md "Measured versus estimated": the CPU reference imitating a device.
EMULATED = "emulated"

__all__ = ["MODES", "FP16_MAX", "NumericsSettings", "NumericsResult", "LayerNumerics", "TensorNumerics",
           "run_numerics", "compare_tensor", "NumericsError", "load_input_samples", "emulation_text",
           "estimate_seconds", "HISTOGRAM_EDGES", "SCHEMA"]

SCHEMA = "layerscope.numerics/1"
# The emulations and the default tolerance live in a light module: the CLI's parser needs them.
from engine.numerics_settings import DEFAULT_TOLERANCE, MODE_COMPUTE, MODE_STORAGE, MODES  # noqa: E402,F401
MODE_DEVICE = "device"  # a device's own outputs through the bridge (engine.numerics_device): measured
MODE_PACKAGE = "package"  # a converted Core ML package on the MIL reference evaluator (engine.numerics_package)
PRECISIONS = ("fp16",)
FP16_MAX = 65504.0
# Below this, fp16 has no relative precision left (subnormals): relative errors are measured against it.
FP16_SMALLEST_NORMAL = 2.0 ** -14
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
        if self.mode not in MODES + (MODE_DEVICE, MODE_PACKAGE):
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
    import onnx
    import onnxruntime as ort
    if mode == MODE_STORAGE:
        return (f"fp16-storage: ONNX Runtime {ort.__version__} on the CPU, arithmetic in fp32; weights, inputs "
                "and every layer's outputs rounded to fp16 (Cast float->float16->float after each layer)")
    return (f"fp16-compute: onnx {onnx.__version__} reference evaluator on numpy {np.__version__} float16 "
            "arrays: weights, inputs, every op's arithmetic steps and outputs in float16; dot products "
            "(Conv, ConvTranspose, MatMul, Gemm) accumulate in fp32 and round once, as numpy's float16 product "
            "does")


# A duration estimate: fixed seconds (preparing the model, building sessions) plus seconds per
# multiply-accumulate, fitted to benchmarks/bench_numerics.py on this project's (busy, 2-vCPU)
# machine: MobileUNet sample and ResNet-50, docs/benchmarks.md.  Labelled an estimate; the live
# progress refines it.
_SECONDS_FIXED = {MODE_STORAGE: 1.3, MODE_COMPUTE: 3.7}
_SECONDS_PER_MAC = {MODE_STORAGE: 9.7e-9, MODE_COMPUTE: 2.8e-8}


def estimate_seconds(total_macs: int, mode: str, samples: int) -> float:
    """A rough duration (estimated: from the model's MACs and this tool's measured rates)."""
    fixed = _SECONDS_FIXED.get(mode, _SECONDS_FIXED[MODE_STORAGE])
    rate = _SECONDS_PER_MAC.get(mode, _SECONDS_PER_MAC[MODE_STORAGE])
    return fixed + total_macs * rate * samples


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


def run_numerics(model_path, settings: Optional[NumericsSettings] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[threading.Event] = None
                 ) -> "NumericsResult":
    """Compare every layer in reduced precision with the fp32 reference (engine.numerics_run).

    Imported on call: onnx and ONNX Runtime stay off the app's start-up path.
    """
    from engine.numerics_run import run_numerics as run
    return run(model_path, settings, progress, cancel)


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
