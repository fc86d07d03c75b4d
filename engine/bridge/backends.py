"""The agent's backends: ONNX Runtime (any OS) and Core ML (macOS only), behind one interface.

    backend.info()                                  -> description entry (available, reason, units, ...)
    session = backend.open(model, compute_unit, settings)   # load/compile; session.load_ms measured
    session.profile(settings, granularity, partial_every, progress, partial, cancel) -> Profile (with transfers)
    session.run(feed) -> {name: array};  session.close()

Profiling happens in batches of runs ("partial_every"): after each batch the
agent sends the merged profile so far, so that a lost agent leaves the
desktop with every completed run.  Each batch after the first re-warms with
one run, because ONNX Runtime's profiler is per session and a fresh
profiled session's first run is slower than the rest.

The ONNX Runtime backend is engine.targets.cpu.CpuTarget (the CPU reference),
extended here to run on another execution provider and to keep what the CPU
reference drops: the provider that ran each kernel (-> compute unit) and the
Memcpy kernels ORT inserts between providers (-> measured transfers).

The Core ML backend needs macOS (coremltools can only predict there).  On
other systems `info()` says so with the reason, and `open` raises
BackendUnavailable; the import of this module never fails.  Its code path is
written against coremltools 8/9 and has not been run on a Mac by its author:
the docs say so.  A package uploaded with its layer map (made by `layerscope convert`) gets
its results keyed by the ONNX source nodes (engine.convert.attribution; the summing is
pure and tested on Linux, the Core ML figures that feed it are not).
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from engine.bridge.calibration import (DEFAULT_SWEEP_BYTES, HOST_UNIT, calibrate_unit, estimate_transfers,
                                       ort_identity_round_trip)
from engine.bridge.protocol import BACKEND_COREML, BACKEND_ONNXRUNTIME, GRANULARITIES, ProtocolError, clip
from engine.bridge.results import Transfer, UnitCalibration, merge_profiles, rekey_transfers
from engine.convert.attribution import profile_on_source, source_nodes_from_layer_map, source_segments
from engine.convert.layermap import LayerMapError, layer_map_path, load_layer_map, source_index
from engine.profile import (ATTRIBUTED, DERIVED, MEASURED, PLANNED, UNKNOWN_UNIT, NodeTiming, Profile,
                            TimingGroup, TimingStats, combine_kinds)
from engine.targets.settings import ProfileSettings, TargetError

__all__ = ["device_description", "OrtBackend", "CoreMLBackend", "BackendUnavailable", "default_backends",
           "batch_size"]

ProgressFn = Callable[[int, int, str, str], None]   # done, total, phase, message
PartialFn = Callable[[Profile], None]


class BackendUnavailable(Exception):
    """A backend that does not run here; the message says why and what to do instead."""


def batch_size(runs: int, partial_every: Optional[int]) -> int:
    """Runs per batch: as asked, else a quarter of the runs (at least one)."""
    if partial_every and partial_every > 0:
        return min(int(partial_every), runs)
    return max(1, math.ceil(runs / 4))


# ============================================================================ device

def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def device_description(name: Optional[str] = None) -> dict:
    from engine.targets.cpu import describe_cpu
    cpu = describe_cpu()
    system = platform.system()
    if system == "Darwin":
        hardware_model = _sysctl("hw.model")
        os_name, os_version = "macOS", platform.mac_ver()[0]
        chip = _sysctl("machdep.cpu.brand_string") or cpu["chip"]
    else:
        hardware_model = _read("/sys/devices/virtual/dmi/id/product_name") or platform.machine()
        os_name, os_version = system, platform.release()
        chip = cpu["chip"]
    return {"name": name or cpu["device"], "hardware_model": hardware_model, "os": os_name,
            "os_version": os_version, "chip": chip, "architecture": platform.machine(),
            "cpu_count": os.cpu_count(), "memory_bytes": cpu["memory_bytes"]}


# ============================================================================ ONNX Runtime

_PROVIDER_UNITS = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "GPU",
                   "TensorrtExecutionProvider": "GPU", "ROCMExecutionProvider": "GPU",
                   "DmlExecutionProvider": "GPU", "CoreMLExecutionProvider": "CoreML"}


def _make_ort_target(provider: str):
    """A CpuTarget that runs on `provider` and records providers and Memcpy kernels of each profile."""
    from engine.targets.cpu import CpuTarget

    class OrtProviderTarget(CpuTarget):
        name = "onnxruntime"

        def __init__(self):
            super().__init__()
            self.provider = provider
            self.providers = tuple(dict.fromkeys((provider, "CPUExecutionProvider")))
            self.reset_capture()

        def reset_capture(self) -> None:
            # kernel name -> (op, bytes, samples per run) of the runtime's copy kernels, across batches
            self.copy_kernels: dict[str, tuple[str, Optional[int], list[float]]] = {}
            self.node_units: dict[str, str] = {}

        def _timings(self, prepared, settings, per_run, kernel_args, optimized_file):
            groups, nodes, warnings = super()._timings(prepared, settings, per_run, kernel_args, optimized_file)
            for kernel, args in kernel_args.items():
                op = str(args.get("op_name", ""))
                if op.startswith("Memcpy"):
                    size = args.get("output_size")
                    entry = self.copy_kernels.setdefault(
                        kernel, (op, int(size) if size is not None else None, []))
                    entry[2].extend(run.get(kernel, 0.0) for run in per_run)
            group_unit: dict[str, str] = {}
            for group in groups:
                kernels = [k.strip() for k in group.kernel.split(" + ")]
                units = {_PROVIDER_UNITS.get(str(kernel_args.get(k, {}).get("provider", "")), None)
                         for k in kernels} - {None}
                if len(units) == 1:
                    group_unit[group.group_id] = units.pop()
            updated = []
            for node in nodes:
                # The provider that ran the node's kernel, as ONNX Runtime's profile reports it;
                # a kernel whose provider the profile does not name leaves the unit unknown.
                unit = group_unit.get(node.group_id)
                if unit is None:
                    updated.append(replace(node, compute_unit=UNKNOWN_UNIT, compute_unit_kind=""))
                    continue
                self.node_units[node.node_id] = unit
                updated.append(replace(node, compute_unit=unit, compute_unit_kind=MEASURED))
            return groups, updated, warnings

    return OrtProviderTarget()


class OrtBackend:
    name = BACKEND_ONNXRUNTIME

    def __init__(self):
        self._calibration: dict[str, UnitCalibration] = {}
        self._calibration_lock = threading.Lock()
        # Set by the agent: where session copies go (its private cache folder) and the tensor bytes
        # one load may create (engine.targets.cpu.check_memory_budget).
        self.work_dir: Optional[Path] = None
        self.memory_budget_bytes: Optional[int] = None

    def providers(self) -> list[str]:
        import onnxruntime as ort
        return list(ort.get_available_providers())

    def compute_units(self) -> list[dict]:
        units = []
        for provider in self.providers():
            unit = _PROVIDER_UNITS.get(provider)
            if unit is not None and not any(u["name"] == unit for u in units):
                units.append({"name": unit, "provider": provider})
        return units

    def info(self) -> dict:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return {"name": self.name, "available": False, "reason": f"onnxruntime is not installed ({exc})"}
        return {"name": self.name, "available": True, "version": ort.__version__, "formats": ["onnx"],
                "providers": self.providers(), "compute_units": self.compute_units(),
                "default_compute_unit": "CPU", "modes": ["exact", "deployed"],
                "granularities": ["model", "layer"], "measured_transfers": "Memcpy kernels",
                "calibrated_units": sorted(self._calibration)}

    def resolve_unit(self, compute_unit: Optional[str]) -> tuple[str, str]:
        """(unit name, provider) for a requested unit or provider name."""
        units = self.compute_units()
        wanted = compute_unit or "CPU"
        for unit in units:
            if wanted in (unit["name"], unit["provider"]):
                return unit["name"], unit["provider"]
        raise ProtocolError("bad_settings", f"compute unit {clip(wanted, 40)!r} is not available for onnxruntime here; "
                                            f"available: {', '.join(u['name'] for u in units)}")

    def calibration(self, unit: str, provider: str, cancel=None, sizes=DEFAULT_SWEEP_BYTES,
                    repeats: int = 5, refresh: bool = False) -> UnitCalibration:
        with self._calibration_lock:
            if refresh or unit not in self._calibration:
                timer = ort_identity_round_trip(provider)
                self._calibration[unit] = calibrate_unit(unit, timer, sizes, repeats,
                                                         method=f"onnxruntime Identity round trip on {provider}",
                                                         cancel=cancel)
            return self._calibration[unit]

    def open(self, model, compute_unit: Optional[str], settings: ProfileSettings) -> "OrtSession":
        if model.format != "onnx":
            raise ProtocolError("bad_settings", f"the onnxruntime backend runs ONNX models; this upload is "
                                                f"{model.format}")
        unit, provider = self.resolve_unit(compute_unit)
        return OrtSession(self, model, unit, provider, settings)


def refuse_external_data(proto) -> None:
    """An upload is one file: a tensor that names an external data file would read some other file
    of the agent (onnx refuses paths leaving the folder, not files beside the model, such as the
    cache's meta.json).  Looked for everywhere a tensor can live: initializers (dense and sparse),
    node attributes (Constant values included), subgraphs, and model-local functions.  Called by
    the CPU target on the parsed model, before any external data is read (in its child process)."""
    import onnx
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ProtocolError("bad_settings", f"tensor '{clip(tensor.name, 80)}' keeps its data in an external "
                                                "file; the bridge takes single-file ONNX models (save with "
                                                "save_as_external_data=False, up to 2 GB)")


def _all_tensors(proto):
    """Every TensorProto of a model: graph, subgraphs at any depth, and model-local functions."""

    def of_sparse(sparse):
        yield sparse.values
        yield sparse.indices

    def of_nodes(nodes):
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("sparse_tensor"):
                    yield from of_sparse(attribute.sparse_tensor)
                for sparse in attribute.sparse_tensors:
                    yield from of_sparse(sparse)
                if attribute.HasField("g"):
                    yield from of_graph(attribute.g)
                for sub in attribute.graphs:
                    yield from of_graph(sub)

    def of_graph(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from of_sparse(sparse)
        yield from of_nodes(graph.node)

    yield from of_graph(proto.graph)
    for function in proto.functions:
        yield from of_nodes(function.node)


class OrtSession:
    def __init__(self, backend: OrtBackend, model, unit: str, provider: str, settings: ProfileSettings):
        self.backend = backend
        self.model = model
        self.compute_unit = unit
        self.provider = provider
        self.target = _make_ort_target(provider)
        if backend.work_dir is not None:
            self.target.work_parent = backend.work_dir
        self.target.memory_budget_bytes = backend.memory_budget_bytes
        # The protobuf work of the load in a child process: the agent keeps answering meanwhile.
        self.target.session_copy_in_child = True
        self.target.check_proto = refuse_external_data
        start = time.perf_counter()
        self.target.prepare(model.path, settings)   # TargetError / ModelLoadError go to the caller
        self.load_ms = (time.perf_counter() - start) * 1000.0
        self.settings = settings

    def io_description(self) -> tuple[list[dict], list[dict]]:
        plain = self.target._prepared.plain
        inputs = [{"name": i.name, "shape": list(self.target.input_shapes.get(i.name, i.shape)), "type": i.type}
                  for i in plain.get_inputs()]
        outputs = [{"name": o.name, "shape": [d if isinstance(d, int) else None for d in o.shape],
                    "type": o.type} for o in plain.get_outputs()]
        return inputs, outputs

    def run(self, feed: Optional[Mapping[str, np.ndarray]] = None) -> dict:
        return self.target.run(feed)

    def profile(self, settings: ProfileSettings, granularity: str, partial_every: Optional[int],
                progress: ProgressFn, partial: PartialFn, cancel: threading.Event) -> Profile:
        target = self.target
        target.reset_capture()
        per_batch = batch_size(settings.runs, partial_every)
        total = settings.runs
        parts: list[Profile] = []
        error = ""
        done = 0
        while done < settings.runs and not cancel.is_set():
            runs = min(per_batch, settings.runs - done)
            warmup = settings.warmup if not parts else min(1, settings.warmup)
            before = done

            def on_progress(index: int, batch_total: int, message: str, warmup=warmup, before=before) -> None:
                if index <= warmup:
                    progress(before, total, "warmup", message)
                else:
                    tail = message.split(":", 1)[1] if ":" in message else ""
                    run = before + index - warmup
                    progress(run, total, "run", f"run {run}/{total}:{tail}" if tail else f"run {run}/{total}")

            part = target.profile(settings.replace(runs=runs, warmup=warmup), progress=on_progress, cancel=cancel)
            parts.append(part)
            done += part.runs_completed
            if part.error and part.error != "cancelled":
                error = part.error
                break
            if part.runs_completed < runs:
                break
            if done < settings.runs:
                partial(self._finish(parts, settings, granularity, complete=False, error="", with_transfers=False))
        if cancel.is_set() and done < settings.runs and not error:
            error = "cancelled"
        if done == 0:
            raise TargetError(error or "no run finished")
        return self._finish(parts, settings, granularity, complete=(done == settings.runs and not error),
                            error=error, with_transfers=True, cancel=cancel)

    def _finish(self, parts: Sequence[Profile], settings: ProfileSettings, granularity: str, complete: bool,
                error: str, with_transfers: bool, cancel=None) -> Profile:
        merged = merge_profiles(parts, runs_requested=settings.runs, warmup=settings.warmup, complete=complete,
                                error=error)
        target_info = dict(merged.target)
        target_info.update({"backend": BACKEND_ONNXRUNTIME, "compute_unit": self.compute_unit,
                            "provider": self.provider, "providers": [self.provider] + (
                                ["CPUExecutionProvider"] if self.provider != "CPUExecutionProvider" else [])})
        merged = replace(merged, target=target_info)
        if granularity == "model":
            merged = replace(merged, nodes={}, groups=(), stage_times_ms={}, op_type_times_ms={}, coverage=None)
        if not with_transfers:
            return merged
        transfers: list[Transfer] = []
        warnings = list(merged.warnings)
        for kernel, (op, size, samples) in self.target.copy_kernels.items():
            if samples:
                to_host = op == "MemcpyToHost"
                transfers.append(Transfer("runtime_copy", kernel, self.compute_unit if to_host else HOST_UNIT,
                                          HOST_UNIT if to_host else self.compute_unit, size,
                                          TimingStats.from_samples(samples, MEASURED), kernel=kernel))
        calibration: dict[str, UnitCalibration] = {}
        units = set(self.target.node_units.values()) | {HOST_UNIT}
        for unit in sorted(units):
            provider = next((u["provider"] for u in self.backend.compute_units() if u["name"] == unit), None)
            if provider is None:
                continue
            try:
                calibration[unit] = self.backend.calibration(unit, provider, cancel=cancel)
            except Exception as exc:  # a failed sweep costs the estimates, not the profile
                warnings.append(f"transfer calibration of {unit} failed: {type(exc).__name__}: {exc}")
        if granularity != "model" and self.target.node_units:
            graph = self.target._prepared.model.main_graph
            estimated, more = estimate_transfers(graph, self.target.node_units, calibration)
            transfers += estimated
            warnings += more
        return replace(merged, transfers=tuple(transfers), calibration=calibration, warnings=tuple(warnings))

    def close(self) -> None:
        self.target.close()


# ============================================================================ Core ML (macOS)

COREML_UNIT_SETTINGS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
# Class names of Core ML's compute devices: MLComputePlan's (macOS) and the ComputePlan that
# coremltools' remote device service reads from a phone.
_DEVICE_UNITS = {"MLCPUComputeDevice": "CPU", "MLGPUComputeDevice": "GPU",
                 "MLNeuralEngineComputeDevice": "NeuralEngine",
                 "CPUDevice": "CPU", "GPUDevice": "GPU", "NeuralEngineDevice": "NeuralEngine"}


COREML_EXACT_MESSAGE = (
    "Core ML has no exact mode: it compiles the whole model and runs it as one unit, fusing ops as it "
    "chooses, and reports no per-op times. What it gives: measured load and prediction times, the compute "
    "plan (each op's planned compute unit and cost weight), per-op times attributed from the measured total "
    "by those weights, and per-segment times derived from prefix models timed on the device. Profile with "
    "--mode deployed; for one measured time per source node use the CPU reference (--target cpu --mode exact)")


def coreml_availability() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, (f"Core ML runs only on macOS and iOS; this agent runs on {platform.system()} "
                       f"{platform.release()}. Profile ONNX models with the onnxruntime backend here; for Core "
                       "ML, or an iPhone connected to a Mac, run `layerscope agent` on that Mac (docs/iphone.md)")
    try:
        import coremltools  # noqa: F401
    except ImportError as exc:
        return False, f"coremltools is not installed ({exc}): pip install coremltools"
    major = int((platform.mac_ver()[0] or "0").split(".")[0] or 0)
    if major < 13:
        return False, f"macOS {platform.mac_ver()[0]} is too old: the four compute-unit settings need macOS 13"
    return True, ""


class CoreMLBackend:
    """Core ML through coremltools, macOS only.  Not run on a Mac by its author: see the module doc."""

    name = BACKEND_COREML

    def __init__(self, team: Optional[str] = None):
        self._calibration: dict[str, UnitCalibration] = {}
        self._calibration_lock = threading.Lock()
        self.team = team  # Apple signing team for ModelRunner (engine.bridge.iphone.team_id)

    def info(self) -> dict:
        available, reason = coreml_availability()
        entry = {"name": self.name, "available": available, "formats": ["mlpackage", "mlmodel"],
                 "compute_units": [{"name": u} for u in COREML_UNIT_SETTINGS], "default_compute_unit": "ALL",
                 "granularities": list(GRANULARITIES), "modes": ["deployed"]}
        if available:
            import coremltools as ct
            entry["version"] = ct.__version__
            entry["compute_plan"] = _compute_plan_class() is not None
        else:
            entry["reason"] = reason
        # iPhones and iPads this Mac drives through ModelRunner: `load` names one in `device`.
        entry["devices"], entry["device_notes"] = self.phones()
        return entry

    def open(self, model, compute_unit: Optional[str], settings: ProfileSettings,
             device: Optional[str] = None, phone_api=None) -> "CoreMLSession":
        """A session on this Mac, or with `device` (name or UDID) on a connected iPhone or iPad."""
        if phone_api is None:  # the tests' fake of coremltools' device service runs anywhere
            available, reason = coreml_availability()
            if not available:
                raise BackendUnavailable(reason)
        if model.format not in ("mlpackage", "mlmodel"):
            raise ProtocolError("bad_settings", f"the coreml backend runs .mlpackage/.mlmodel models; this "
                                                f"upload is {model.format} (convert it with `layerscope convert`)")
        if settings.mode == "exact":
            raise ProtocolError("bad_settings", COREML_EXACT_MESSAGE)
        unit = compute_unit or "ALL"
        if unit not in COREML_UNIT_SETTINGS:
            raise ProtocolError("bad_settings", f"Core ML compute unit must be one of "
                                                f"{', '.join(COREML_UNIT_SETTINGS)}, got {unit!r}")
        if device:
            from engine.bridge.iphone import open_phone_session
            return open_phone_session(self, model, unit, settings, device, api=phone_api, team=self.team)
        return CoreMLSession(self, model, unit, settings)

    def phones(self) -> tuple[list[dict], list[str]]:
        """Connected iPhones and iPads (macOS; elsewhere a note says how to reach one through a Mac)."""
        from engine.bridge.iphone import list_phones
        return list_phones()

    def calibration(self, setting: str, cancel=None, sizes=DEFAULT_SWEEP_BYTES, repeats: int = 5
                    ) -> Optional[UnitCalibration]:
        """Round trips through a one-op model pinned to `setting`, labelled by the device it ran on."""
        with self._calibration_lock:
            if setting in self._calibration:
                return self._calibration[setting]
            import coremltools as ct
            models: dict[int, Any] = {}
            device = None

            def round_trip(tensor_bytes: int) -> float:
                nonlocal device
                model = models.get(tensor_bytes)
                if model is None:
                    model, device = _one_op_model(ct, tensor_bytes // 4, setting)
                    models[tensor_bytes] = model
                x = np.random.default_rng(0).random((1, max(1, tensor_bytes // 4)), dtype=np.float32)
                start = time.perf_counter()
                model.predict({"x": x})
                return (time.perf_counter() - start) * 1000.0

            fit = calibrate_unit(setting, round_trip, sizes, repeats, method=f"Core ML one-op model, {setting}",
                                 cancel=cancel)
            unit = device or {"CPU_ONLY": "CPU", "CPU_AND_GPU": "GPU", "CPU_AND_NE": "NeuralEngine"}.get(setting, UNKNOWN_UNIT)
            fit = replace(fit, unit=unit)
            self._calibration[setting] = fit
            return fit


def _compiled_model_path(mlmodel, warnings: list[str]) -> Optional[str]:
    """The .mlmodelc Core ML compiled the package into, or None (with a warning saying why).

    coremltools 9 raises when the model was not compiled (e.g. loaded with
    skip_model_load) instead of returning None as earlier releases did."""
    getter = getattr(mlmodel, "get_compiled_model_path", None)
    if getter is None:
        warnings.append("this coremltools has no get_compiled_model_path: the compiled load time and the "
                        "compute plan are not available")
        return None
    try:
        return str(getter()) or None
    except Exception as exc:
        warnings.append(f"Core ML gave no compiled model ({type(exc).__name__}: {exc}): the compiled load time "
                        "and the compute plan are not available")
        return None


def plan_unit(device) -> str:
    """Our name of a compute device of Core ML's plan (an MLComputeDevice or coremltools' remote
    ComputePlan device), "unknown" for anything else or None."""
    if device is None:
        return UNKNOWN_UNIT
    return _DEVICE_UNITS.get(type(device).__name__, UNKNOWN_UNIT)


def _read_local_plan(plan, structure, result: dict, warnings: list[str], prefix: str = "") -> None:
    """Fill `result` (op id -> (unit, cost weight)) from an MLComputePlan, walking into pipelines."""
    if structure.program is not None:
        for op in _mil_operations(structure.program.functions["main"].block):
            if not op.outputs or op.operator_name == "const":
                continue
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            cost = plan.get_estimated_cost_for_mlprogram_operation(op)
            unit = plan_unit(usage.preferred_compute_device if usage is not None else None)
            result[op.outputs[0].name] = (unit, float(cost.weight) if cost is not None else None)
    elif structure.neuralnetwork is not None:
        for layer in structure.neuralnetwork.layers:
            usage = plan.get_compute_device_usage_for_neuralnetwork_layer(layer)
            result[layer.name] = (plan_unit(usage.preferred_compute_device if usage is not None else None), None)
    elif structure.pipeline is not None:
        for name, sub_model in structure.pipeline.sub_models:
            _read_local_plan(plan, sub_model, result, warnings, prefix=f"{prefix}{name}/")
    else:
        warnings.append(f"the compute plan of model part '{prefix or 'main'}' has no program, neural network or "
                        "pipeline: its ops' compute units are unknown")


def _compute_plan_class():
    try:
        from coremltools.models.compute_plan import MLComputePlan
        return MLComputePlan
    except Exception:
        return None


def _one_op_model(ct, elements: int, setting: str):
    """A Core ML model computing x * 1 on a (1, elements) float32 tensor, for the calibration sweep."""
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, max(1, elements)))])
    def program(x):
        return mb.mul(x=x, y=np.float32(1.0), name="y")

    model = ct.convert(program, convert_to="mlprogram", compute_units=getattr(ct.ComputeUnit, setting),
                       minimum_deployment_target=ct.target.macOS13)
    device = None
    plan_class = _compute_plan_class()
    if plan_class is not None:
        try:
            plan = plan_class.load_from_path(path=_compiled_model_path(model, []),
                                             compute_units=getattr(ct.ComputeUnit, setting))
            for op in plan.model_structure.program.functions["main"].block.operations:
                usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                if usage is not None and op.operator_name == "mul":
                    device = plan_unit(usage.preferred_compute_device)
        except Exception:
            device = None
    return model, device


_MIL_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "DOUBLE": np.float64, "INT32": np.int32}


class CoreMLSession:
    """One Core ML model loaded with one compute-unit setting.  macOS only (not run by its author)."""

    def __init__(self, backend: CoreMLBackend, model, setting: str, settings: ProfileSettings):
        import coremltools as ct
        from engine.analysis import analyze
        from importers import open_model
        self.ct = ct
        self.backend = backend
        self.model = model
        self.compute_unit = setting
        self.settings = settings
        self.warnings: list[str] = []
        self._load()
        self.ir_model = open_model(model.path, input_shapes=dict(settings.input_shapes) or None)
        self.analysis = analyze(self.ir_model)
        self.feed = self._make_feed(settings)
        self._plan: Optional[dict[str, tuple[str, Optional[float]]]] = None
        # A package converted by `layerscope convert` comes with its layer map (stored beside it
        # by the cache): results are then keyed by the ONNX source nodes (engine.convert.attribution).
        self.layer_map, self.source_nodes = _layer_map_beside(Path(model.path), self.warnings)
        self._segment_members: dict[str, tuple[str, ...]] = {}

    def _load(self) -> None:
        """Load the package with Core ML here: mlmodel, spec, load times, compiled path."""
        ct = self.ct
        units = getattr(ct.ComputeUnit, self.compute_unit)
        start = time.perf_counter()
        try:
            self.mlmodel = ct.models.MLModel(str(self.model.path), compute_units=units)
        except Exception as exc:
            raise TargetError(f"Core ML could not load the model: {type(exc).__name__}: {exc}") from None
        self.load_ms = (time.perf_counter() - start) * 1000.0  # compile + load of the package
        self.compiled_load_ms = None
        compiled = _compiled_model_path(self.mlmodel, self.warnings)
        self.compiled_path = compiled
        if compiled:
            start = time.perf_counter()
            try:
                ct.models.CompiledMLModel(str(compiled), compute_units=units)
                self.compiled_load_ms = (time.perf_counter() - start) * 1000.0  # what an app pays at launch
            except Exception as exc:
                self.warnings.append(f"loading the compiled model again failed: {exc}")
        self.spec = self.mlmodel.get_spec()

    # -- inputs ---------------------------------------------------------------------------

    def _make_feed(self, settings: ProfileSettings) -> dict:
        rng = np.random.default_rng(settings.seed)
        feed = {}
        for feature in self.spec.description.input:
            kind = feature.type.WhichOneof("Type")
            if kind == "multiArrayType":
                array_type = feature.type.multiArrayType
                shape = settings.input_shapes.get(feature.name) or tuple(int(d) for d in array_type.shape)
                if not shape and array_type.HasField("enumeratedShapes"):
                    shape = tuple(array_type.enumeratedShapes.shapes[0].shape)
                dtype_name = self.ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array_type.dataType)
                dtype = _MIL_NUMPY.get(dtype_name, np.float32)
                feed[feature.name] = (np.zeros(shape, dtype) if settings.inputs == "zeros"
                                      else rng.random(shape).astype(dtype))
            elif kind == "imageType":
                from PIL import Image
                image = feature.type.imageType
                height, width = (settings.size or (image.height, image.width))
                channels = 1 if image.colorSpace == 10 else 3  # GRAYSCALE = 10
                pixels = (rng.random((height, width, channels)) * 255).astype(np.uint8)
                feed[feature.name] = Image.fromarray(pixels.squeeze() if channels == 1 else pixels)
            else:
                raise ProtocolError("bad_settings", f"input '{feature.name}' has type {kind}, which the agent "
                                                    "cannot generate values for")
        return feed

    def io_description(self) -> tuple[list[dict], list[dict]]:
        inputs = [{"name": k, "shape": list(getattr(v, "shape", ()) or ())} for k, v in self.feed.items()]
        outputs = [{"name": o.name} for o in self.spec.description.output]
        return inputs, outputs

    def run(self, feed: Optional[Mapping[str, Any]] = None) -> dict:
        return {k: np.asarray(v) for k, v in self.mlmodel.predict(dict(feed or self.feed)).items()}

    # -- compute plan ---------------------------------------------------------------------

    def compute_plan(self) -> dict[str, tuple[str, Optional[float]]]:
        """node id -> (planned compute unit or "unknown", estimated cost weight or None) from MLComputePlan."""
        if self._plan is not None:
            return self._plan
        plan_class = _compute_plan_class()
        result: dict[str, tuple[str, Optional[float]]] = {}
        if plan_class is None or not self.compiled_path:
            self.warnings.append("no MLComputePlan here (needs coremltools 8 and macOS 14.4): per-op compute "
                                 "units unknown, times split by static FLOPs")
            self._plan = result
            return result
        try:
            plan = plan_class.load_from_path(path=str(self.compiled_path),
                                             compute_units=getattr(self.ct.ComputeUnit, self.compute_unit))
            _read_local_plan(plan, plan.model_structure, result, self.warnings)
        except Exception as exc:
            self.warnings.append(f"MLComputePlan failed ({type(exc).__name__}: {exc}): per-op compute units "
                                 "unknown, times split by static FLOPs")
        self._plan = result
        return result

    # -- profile --------------------------------------------------------------------------

    def _time_predictions(self, model, runs: int, warmup: int, cancel, on_run=None) -> list[float]:
        """Wall time of each prediction here, ms (the warm-up runs are reported to on_run, not kept)."""
        samples = []
        for index in range(warmup + runs):
            if cancel.is_set():
                break
            start = time.perf_counter()
            model.predict(self.feed)
            elapsed = (time.perf_counter() - start) * 1000.0
            if index >= warmup:
                samples.append(elapsed)
            if on_run is not None:
                on_run(index, elapsed)
        return samples

    def _prefix_model(self, spec, name: str):
        """A loaded model of a prefix spec (the device's own hook: a phone sends it to ModelRunner)."""
        return self.ct.models.MLModel(spec, weights_dir=getattr(self.mlmodel, "weights_dir", None),
                                      compute_units=getattr(self.ct.ComputeUnit, self.compute_unit))

    def _device_target(self) -> dict:
        """What the profile's target says about the device the model ran on."""
        return {"name": "coreml", "runtime": f"Core ML (coremltools {self.ct.__version__})", **device_description()}

    def profile(self, settings: ProfileSettings, granularity: str, partial_every: Optional[int],
                progress: ProgressFn, partial: PartialFn, cancel: threading.Event) -> Profile:
        total = settings.runs
        per_batch = batch_size(settings.runs, partial_every)
        samples: list[float] = []

        def on_run(index: int, elapsed: float) -> None:
            if index < settings.warmup:
                progress(0, total, "warmup", f"warm-up {index + 1}/{settings.warmup}")
                return
            done = index - settings.warmup + 1
            samples.append(elapsed)
            progress(done, total, "run", f"run {done}/{total}: {elapsed:.2f} ms")
            if done % per_batch == 0 and done < total:
                partial(self._build(settings, list(samples), {}, complete=False, error="", transfers=False))

        error = ""
        try:
            self._time_predictions(self.mlmodel, settings.runs, settings.warmup, cancel, on_run)
        except TargetError as exc:  # the device went away: keep the runs it finished
            if not samples:
                raise
            error = str(exc)
        if not samples:
            raise TargetError("cancelled before any run finished" if cancel.is_set() else "no run finished")
        segments: dict[str, Segment] = {}
        if granularity in ("segment", "layer") and not cancel.is_set() and not error:
            try:
                segments = self._segment_samples(self.ir_model.main_graph, granularity, settings, cancel, progress)
            except TargetError as exc:
                error = f"{exc} while timing the segments; the whole-model runs are kept"
        complete = len(samples) == settings.runs and not cancel.is_set() and not error
        return self._build(settings, samples, segments, complete=complete,
                           error=error or ("" if complete else "cancelled"), transfers=True, cancel=cancel)

    def _segment_cuts(self, graph, granularity: str) -> list[tuple[str, tuple[str, ...]]]:
        """(segment name, its op ids) in program order: stage ends, source stages, or every op."""
        order = [n.id for n in graph.nodes if n.id in self.analysis.nodes
                 and not self.analysis.nodes[n.id].is_constant]
        if granularity == "layer":
            return [(node_id, (node_id,)) for node_id in order]
        if self.layer_map is not None:
            # Cut where the source model's stages end, so that segments are its encoder, decoder, ...
            return [(name, tuple(ids)) for name, ids in source_segments(self.layer_map, self.source_nodes, order)]
        return [(stage.name, tuple(stage.node_ids)) for stage in self.analysis.stages if stage.node_ids]

    def _segment_samples(self, graph, granularity: str, settings: ProfileSettings, cancel,
                         progress: ProgressFn) -> dict[str, "Segment"]:
        """Each segment's time from prefix models cut at segment ends, timed on the device.

        The prefix model up to cut k outputs every tensor live across the cut, so the ops
        of the prefix are not optimised away.  Prefix k's samples are measured; segment k's
        are prefix k's minus prefix k-1's, matched by rank (clamped at 0): derived, except
        the first segment, which is its prefix.
        """
        cuts = self._segment_cuts(graph, granularity)
        self._segment_members = dict(cuts)
        if len(cuts) < 2:
            return {}
        runs = max(3, settings.runs // 2)
        prefixes: list[tuple[str, list[float]]] = []
        for index, (name, node_ids) in enumerate(cuts):
            if cancel.is_set():
                break
            progress(index, len(cuts), "segments", f"segment {index + 1}/{len(cuts)}: {name}")
            if index == len(cuts) - 1:
                prefix = self.mlmodel
            else:
                try:
                    prefix = self._prefix_model(_truncated_spec(self.spec, node_ids[-1], graph), name)
                except TargetError:
                    raise
                except Exception as exc:
                    self.warnings.append(f"could not cut the model after {name} ({type(exc).__name__}: {exc}); "
                                         "segment times are attributed instead")
                    return {}
            prefixes.append((name, sorted(self._time_predictions(prefix, runs, 1, cancel))))
        return segments_from_prefixes(prefixes)

    def _transfer_calibration(self, units: Sequence[str], cancel) -> dict[str, UnitCalibration]:
        """Transfer fits for `units`, measured here with one-op models (the device's own hook)."""
        calibration: dict[str, UnitCalibration] = {}
        settings_for_unit = {"CPU": "CPU_ONLY", "GPU": "CPU_AND_GPU", "NeuralEngine": "CPU_AND_NE"}
        for unit in units:
            if unit not in settings_for_unit:
                continue
            try:
                fit = self.backend.calibration(settings_for_unit[unit], cancel=cancel)
                if fit is not None and fit.unit == unit:
                    calibration[unit] = fit
            except Exception as exc:
                self.warnings.append(f"transfer calibration of {unit} failed: {exc}")
        return calibration

    def _build(self, settings: ProfileSettings, samples: list[float], segments: Mapping[str, "Segment"],
               complete: bool, error: str, transfers: bool, cancel=None) -> Profile:
        """Groups: timed segments (or the whole model) split over their ops by compute-plan cost."""
        graph = self.ir_model.main_graph
        plan = self.compute_plan()
        analysis = self.analysis
        ops = [n for n in graph.nodes if n.id in analysis.nodes and not analysis.nodes[n.id].is_constant]
        stage_of = {node_id: stage.name for stage in analysis.stages for node_id in stage.node_ids}
        if segments:
            # The cuts that were timed: a stage (or source stage) each, or one op each at layer granularity.
            members = {name: node_ids for name, node_ids in self._segment_members.items() if name in segments}
            groups, nodes = split_measured_groups(
                graph, analysis, plan, members, {name: s.samples for name, s in segments.items()}, stage_of,
                group_kinds={name: s.kind for name, s in segments.items()},
                prefix_samples={name: s.prefix_samples for name, s in segments.items()})
        else:
            groups, nodes = split_measured_groups(graph, analysis, plan, {"model": tuple(n.id for n in ops)},
                                                  {"model": samples}, stage_of)
        target = {**self._device_target(), "backend": BACKEND_COREML, "compute_unit": self.compute_unit,
                  "compute_units": sorted({u for u, _ in plan.values()} or {UNKNOWN_UNIT}),
                  "compute_units_kind": PLANNED if plan else "",
                  "load_ms": self.load_ms, "compiled_load_ms": self.compiled_load_ms}
        profile = Profile.build(model_path=str(self.model.path), model_format=self.ir_model.format, target=target,
                                mode="deployed", settings=settings.to_dict(), end_to_end_samples=samples,
                                profiled_samples=(), groups=groups, nodes=nodes, runs_completed=len(samples),
                                complete=complete, error=error, stage_order=[s.name for s in analysis.stages],
                                warnings=self.warnings)
        on_source: Optional[Profile] = None
        if self.layer_map is not None:
            try:
                on_source = profile_on_source(profile, self.layer_map, self.source_nodes)
            except LayerMapError as exc:
                self.warnings.append(f"the layer map does not fit this package ({exc}); results are keyed by "
                                     "Core ML op")
                self.layer_map = None
        if not transfers:
            return on_source or profile
        units = sorted({n.compute_unit for n in nodes if n.compute_unit != UNKNOWN_UNIT} | {HOST_UNIT})
        calibration = self._transfer_calibration(units, cancel)
        estimated, warnings = estimate_transfers(graph, {n.node_id: n.compute_unit for n in nodes
                                                         if n.compute_unit != UNKNOWN_UNIT}, calibration,
                                                 keep_untimed=True)
        if on_source is not None:
            estimated = rekey_transfers(estimated, source_index(self.layer_map))
            profile = on_source
        return replace(profile, transfers=tuple(estimated), calibration=calibration,
                       warnings=tuple(profile.warnings) + tuple(warnings))

    def close(self) -> None:
        self.mlmodel = None


class PhoneSession(CoreMLSession):
    """A Core ML model run on an iPhone or iPad by ModelRunner (engine.bridge.iphone), from a Mac.

    Compiled here, loaded and timed on the phone: the load time and every prediction's time
    are ModelRunner's own measurements on the device; compute units and cost weights come
    from the phone's compute plan (planned).  Prefix models for segments are saved, compiled
    and loaded on the phone like the model.  Nothing is calibrated on the phone, so transfers
    between its units carry bytes and no time.
    """

    def __init__(self, backend: "CoreMLBackend", model, setting: str, settings: ProfileSettings, link):
        self.link = link
        self._workdir = Path(tempfile.mkdtemp(prefix="layerscope-phone-"))
        self.plan_details: dict[str, dict] = {}
        super().__init__(backend, model, setting, settings)

    def _load(self) -> None:
        from engine.bridge.iphone import RemoteModel
        ct = self.ct
        try:
            local = ct.models.MLModel(str(self.model.path), skip_model_load=True)
        except Exception as exc:
            raise TargetError(f"coremltools could not read the model: {type(exc).__name__}: {exc}") from None
        self.spec = local.get_spec()
        self.weights_dir = getattr(local, "weights_dir", None)
        start = time.perf_counter()
        try:
            self.compiled_path = str(self.link.api.compile(Path(self.model.path), self._workdir))
        except Exception as exc:
            raise TargetError(f"Core ML could not compile the model on this Mac: {type(exc).__name__}: {exc}"
                              ) from None
        self.compile_ms = (time.perf_counter() - start) * 1000.0
        self.mlmodel = RemoteModel(self.link, Path(self.compiled_path), self.compute_unit)
        if self.mlmodel.load_ms is None:
            raise TargetError(f"ModelRunner on {self.link.name} loaded the model without saying how long it took")
        self.load_ms = self.mlmodel.load_ms     # measured on the phone by ModelRunner
        self.compiled_load_ms = None

    def _make_feed(self, settings: ProfileSettings) -> dict:
        feed = super()._make_feed(settings)
        images = [name for name, value in feed.items() if not isinstance(value, np.ndarray)]
        if images:
            raise ProtocolError("bad_settings", f"input(s) {', '.join(images)} are images; ModelRunner takes "
                                                "tensors only (coremltools' remote service): convert the model "
                                                "with tensor inputs to profile it on a phone")
        return feed

    def run(self, feed: Optional[Mapping[str, Any]] = None) -> dict:
        outputs, _ = self.mlmodel.predict(dict(feed or self.feed))
        return {k: np.asarray(v) for k, v in outputs.items()}

    def _time_predictions(self, model, runs: int, warmup: int, cancel, on_run=None) -> list[float]:
        """Each prediction's time as ModelRunner measured it on the phone (the file copies to and
        from the phone are not in it)."""
        samples = []
        try:
            for index in range(warmup + runs):
                if cancel.is_set():
                    break
                _, elapsed = model.predict(self.feed)
                if elapsed is None:
                    raise TargetError(f"ModelRunner on {self.link.name} did not say how long a prediction took")
                if index >= warmup:
                    samples.append(elapsed)
                if on_run is not None:
                    on_run(index, elapsed)
        finally:
            if model is not self.mlmodel:
                model.unload()
        return samples

    def _prefix_model(self, spec, name: str):
        from engine.bridge.iphone import RemoteModel
        folder = Path(tempfile.mkdtemp(prefix="prefix-", dir=self._workdir))
        package = folder / "prefix.mlpackage"
        self.ct.models.MLModel(spec, weights_dir=self.weights_dir, skip_model_load=True).save(str(package))
        compiled = self.link.api.compile(package, folder)
        return RemoteModel(self.link, Path(compiled), self.compute_unit)

    def compute_plan(self) -> dict[str, tuple[str, Optional[float]]]:
        if self._plan is not None:
            return self._plan
        from engine.bridge.iphone import plan_from_remote
        try:
            self._plan, self.plan_details = plan_from_remote(self.mlmodel.compute_plan())
        except TargetError as exc:
            self.warnings.append(f"the phone's compute plan could not be read ({exc}): per-op compute units "
                                 "unknown, times split by static FLOPs")
            self._plan = {}
        return self._plan

    def _device_target(self) -> dict:
        entry = self.link.entry
        return {"name": "iphone", "runtime": f"Core ML on the device, through ModelRunner (coremltools "
                                             f"{self.ct.__version__})",
                "device": entry["name"], "udid": entry["udid"], "hardware_model": entry.get("hardware_model", ""),
                "model_name": entry.get("model", ""), "os": f"{entry['os']} {entry['os_version']}".strip(),
                "chip": "", "compile_ms_on_host": self.compile_ms, "load_kind": MEASURED,
                "compute_plan": self.plan_details}

    def _transfer_calibration(self, units: Sequence[str], cancel) -> dict[str, UnitCalibration]:
        return {}  # nothing on the phone is calibrated: transfers carry bytes, no time

    def close(self) -> None:
        if self.mlmodel is not None:
            self.mlmodel.unload()
        self.mlmodel = None
        shutil.rmtree(self._workdir, ignore_errors=True)


@dataclass(frozen=True)
class Segment:
    """Times of one segment of a model: `samples` (derived, or measured for the first segment) and
    the measured samples of the prefix model that ends with it."""

    samples: tuple[float, ...]
    kind: str
    prefix_samples: tuple[float, ...]


def segments_from_prefixes(prefixes: Sequence[tuple[str, Sequence[float]]]) -> dict[str, Segment]:
    """Segments from the measured, sorted samples of prefix models in cut order.

    Segment k = prefix k - prefix k-1, rank by rank, clamped at 0 (derived); the first
    segment is its own prefix (measured).  Pure: tested on Linux.
    """
    result: dict[str, Segment] = {}
    previous: Optional[Sequence[float]] = None
    for name, times in prefixes:
        times = tuple(sorted(times))
        if not times:
            break
        if previous is None:
            result[name] = Segment(times, MEASURED, times)
        else:
            result[name] = Segment(tuple(max(0.0, a - b) for a, b in zip(times, previous)), DERIVED, times)
        previous = times
    return result


def split_measured_groups(graph, analysis, plan: Mapping[str, tuple[str, Optional[float]]],
                          members: Mapping[str, Sequence[str]], group_samples: Mapping[str, Sequence[float]],
                          stage_of: Mapping[str, str], group_kinds: Optional[Mapping[str, str]] = None,
                          prefix_samples: Optional[Mapping[str, Sequence[float]]] = None
                          ) -> tuple[list[TimingGroup], list[NodeTiming]]:
    """Timed groups (segments, or the whole model) split over their ops by compute-plan cost.

    plan: op id -> (planned compute unit, estimated cost weight or None); an op without a
    cost weight is weighted by its static FLOPs, a group without any weight evenly.
    group_kinds: the kind of each group's time (measured unless said: a segment from two
    prefixes is derived); prefix_samples: the measured prefix model ending with the group.
    A group of one op gives it the group's time and kind; otherwise each op's share is
    `attributed`.  An op the plan names gets its compute unit with kind `planned`, any other
    op "unknown".  Nodes come back in program order.  Pure: no Core ML call.
    """
    groups, nodes = [], []
    for group_id, node_ids in members.items():
        values = group_samples.get(group_id) or []
        if not values or not node_ids:
            continue
        group_kind = (group_kinds or {}).get(group_id, MEASURED)
        stats = TimingStats.from_samples(values, group_kind)
        prefix = (prefix_samples or {}).get(group_id)
        groups.append(TimingGroup(group_id, group_id, tuple(node_ids), stats, "segment",
                                  TimingStats.from_samples(prefix, MEASURED) if prefix else None))
        weights = []
        for node_id in node_ids:
            cost = plan.get(node_id, (None, None))[1]
            weights.append(cost if cost is not None else float(analysis.nodes[node_id].flops or 0))
        weight_total = sum(weights) or float(len(node_ids))
        if not sum(weights):
            weights = [1.0] * len(node_ids)
        for node_id, weight in zip(node_ids, weights):
            metrics = analysis.nodes[node_id]
            kind = group_kind if len(node_ids) == 1 else combine_kinds((group_kind, ATTRIBUTED))
            unit = plan.get(node_id, (UNKNOWN_UNIT, None))[0] or UNKNOWN_UNIT
            nodes.append(NodeTiming(node_id, metrics.op_type, stage_of.get(node_id, metrics.stage),
                                    stats.scaled(weight / weight_total, kind), group_id, kind,
                                    metrics.output_bytes, None, unit, PLANNED if unit != UNKNOWN_UNIT else ""))
    order = {n.id: i for i, n in enumerate(graph.nodes)}
    nodes.sort(key=lambda n: order.get(n.node_id, 0))
    return groups, nodes


def _layer_map_beside(package_path: Path, warnings: list[str]) -> tuple[Optional[dict], Optional[list]]:
    """The layer map uploaded with a package (the cache stores it beside the package), if usable."""
    path = layer_map_path(package_path)
    if not path.is_file():
        return None, None
    try:
        layer_map = load_layer_map(path)
        return layer_map, source_nodes_from_layer_map(layer_map)
    except LayerMapError as exc:
        warnings.append(f"the layer map uploaded with the package cannot be used ({exc}); results are keyed "
                        "by Core ML op")
        return None, None


def _mil_operations(block):
    for op in block.operations:
        yield op
        for inner in getattr(op, "blocks", ()) or ():
            yield from _mil_operations(inner)


def _truncated_spec(spec, last_node_id: str, graph):
    """A copy of an ML program (or neural network) spec that ends after node `last_node_id`.

    Outputs: every tensor produced up to the cut and read after it (or an
    original output), so nothing before the cut is dead code.
    """
    new = type(spec)()
    new.CopyFrom(spec)
    order = [n.id for n in graph.nodes]
    cut = order.index(last_node_id)
    kept = graph.nodes[:cut + 1]
    later_inputs = {name for node in graph.nodes[cut + 1:] for name in node.inputs} | set(graph.outputs)
    frontier = [v for node in kept for v in node.outputs if v in later_inputs]
    if new.WhichOneof("Type") == "mlProgram":
        function = new.mlProgram.functions["main"]
        block = function.block_specializations[function.opset]
        produced = set()
        keep_count = 0
        for index, op in enumerate(block.operations):
            names = [o.name for o in op.outputs]
            produced.update(names)
            if last_node_id in names:
                keep_count = index + 1
                break
        del block.operations[keep_count:]
        del block.outputs[:]
        block.outputs.extend(frontier)
        types = {o.name: o.type for op in block.operations for o in op.outputs}
        del new.description.output[:]
        for name in frontier:
            feature = new.description.output.add()
            feature.name = name
            array = feature.type.multiArrayType
            tensor = types[name].tensorType
            array.shape.extend(int(d.constant.size) for d in tensor.dimensions)
            # MIL data types: FLOAT16 = 10, FLOAT32 = 11; ArrayFeatureType: FLOAT16 = 65552, FLOAT32 = 65568
            array.dataType = 65552 if tensor.dataType == 10 else 65568 if tensor.dataType == 11 else 131104
        if any(tensor_type.tensorType.dataType == 10 for tensor_type in (types[n] for n in frontier)):
            new.specificationVersion = max(new.specificationVersion, 7)
        return new
    layers = new.neuralNetwork.layers if new.HasField("neuralNetwork") else None
    if layers is None:
        raise ValueError("only ML programs and neural networks can be cut into segments")
    index = next(i for i, layer in enumerate(layers) if layer.name == last_node_id)
    del layers[index + 1:]
    del new.description.output[:]
    for name in frontier:
        feature = new.description.output.add()
        feature.name = name
        feature.type.multiArrayType.dataType = 65568
    return new


def default_backends(team: Optional[str] = None) -> dict[str, Any]:
    return {BACKEND_ONNXRUNTIME: OrtBackend(), BACKEND_COREML: CoreMLBackend(team)}
