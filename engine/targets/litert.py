"""LiteRT CPU reference: `.tflite` models on this computer, timed per operator.

Same interface as the ONNX CPU target (engine.targets.cpu).  The Python `Interpreter` and
`CompiledModel` of ai-edge-litert expose no profiler, so the model runs through the C API of
the `libLiteRt.so` inside the wheel (ctypes): a compiled model with the runtime option
`enable_profiling = true` hands out a profiler whose events (litert/c/litert_profiler_event.h)
carry one record per operator invocation.

- exact: CPU `kernel_mode = "builtin"` (LiteRT's own kernels, no delegate).  Every operator
  gives one OPERATOR_INVOKE_EVENT per run (metadata: operator index, subgraph index): one
  measured timing per operator, keyed by `importers.tflite.operator_node_id`.
- deployed: the default CPU pipeline (XNNPACK), what a phone's CPU runs.  XNNPACK reports its
  own fused operators (DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT, indexed within XNNPACK's
  graph, not by TFLite operator), so they are mapped back (`map_delegate_events`): operators
  XNNPACK leaves to LiteRT keep their own measured events and split the run into segments;
  within a segment the convolution-like operators (conv, depthwise, transposed conv, fully
  connected, batch matmul) are anchors matched one to one, in order, with XNNPACK's
  convolution / fully-connected operators, and the operators between two anchors share the
  XNNPACK operators between them (time split by FLOPs: `attributed`).  When the anchors do
  not match, a whole segment becomes one group (attributed), and the profile says so.

The ProfiledEventData layout can change between releases: per-operator events are read only
from the ai-edge-litert versions in TESTED_VERSIONS (and only when their records look sane);
with any other version the runs are timed as a whole, and the profile says why.
"""
from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from engine.ir import Model, ModelLoadError
from engine.profile import (ATTRIBUTED, MEASURED, MODE_DEPLOYED, MODE_EXACT, NodeTiming, Profile, TimingGroup,
                            TimingStats)
from engine.targets.prepared import PreparedModelTarget
from engine.targets.settings import ProfileSettings, ProgressCallback, TargetError
from importers.tflite import PROPAGATION_FAILED as _PROPAGATION_FAILED

__all__ = ["LiteRtCpuTarget", "map_delegate_events", "TESTED_VERSIONS", "litert_version"]

# ai-edge-litert releases whose ProfiledEventData layout this module was checked against.
TESTED_VERSIONS = ("2.3.0",)

# litert/c/litert_profiler_event.h
OPERATOR_INVOKE_EVENT = 1 << 1
DELEGATE_OPERATOR_INVOKE_EVENT = 1 << 2
DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT = 1 << 3
_KNOWN_EVENT_TYPES = {1 << i for i in range(9)}
_CPU_ACCELERATOR = 1  # kLiteRtHwAcceleratorCpu
_LOCK_WRITE = 1  # kLiteRtTensorBufferLockModeWrite
_RUNTIME_OPTIONS = "runtime_options_string"  # LrtGetRuntimeOptionsIdentifier()
_CPU_OPTIONS = "xnnpack"  # LrtGetCpuOptionsIdentifier()
# LiteRtLayout (litert/c/litert_layout.h, 2.3.0): rank and has_strides bit fields in 4 bytes, then
# int32 dimensions[8] and uint32 strides[8]; LiteRtRankedTensorType holds it after its element type.
_LAYOUT_BYTES = 4 + 8 * 4 + 8 * 4
_LAYOUT_OFFSET = 4
_STATUS_NAMES = {1: "invalid argument", 2: "memory allocation failure", 3: "runtime failure",
                 4: "missing implementation", 5: "unsupported", 6: "not found", 7: "timeout"}

# TFLite operators XNNPACK turns into exactly one convolution / fully-connected / matmul operator.
ANCHOR_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "Convolution2DTransposeBias",
              "FULLY_CONNECTED", "BATCH_MATMUL", "CONV_3D"}
_XNNPACK_ANCHOR_PREFIXES = ("Convolution", "Deconvolution", "Fully Connected", "Batch Matrix Multiply")


class _MemoryUsage(ctypes.Structure):
    _fields_ = [("total_allocated_bytes", ctypes.c_size_t), ("in_use_allocated_bytes", ctypes.c_size_t),
                ("private_footprint_bytes", ctypes.c_size_t)]


class _ProfiledEventData(ctypes.Structure):
    """ProfiledEventData of litert/c/litert_profiler_event.h (ai-edge-litert 2.3.0)."""
    _fields_ = [("tag", ctypes.c_void_p), ("event_type", ctypes.c_int), ("start_timestamp_us", ctypes.c_uint64),
                ("elapsed_time_us", ctypes.c_uint64), ("begin_mem_usage", _MemoryUsage),
                ("end_mem_usage", _MemoryUsage), ("event_metadata1", ctypes.c_uint64),
                ("event_metadata2", ctypes.c_uint64), ("event_source", ctypes.c_int)]


@dataclass(frozen=True)
class Event:
    """One profiler record, copied out of the C array."""
    tag: str
    event_type: int
    start_us: int
    elapsed_us: int
    metadata1: int
    metadata2: int


def litert_version() -> Optional[str]:
    try:
        import ai_edge_litert
    except ImportError:
        return None
    return str(getattr(ai_edge_litert, "__version__", "") or "unknown")


_library = None
_library_lock = threading.Lock()


def _load_library():
    global _library
    with _library_lock:
        if _library is None:
            try:
                import ai_edge_litert
            except ImportError as exc:
                raise TargetError("running .tflite models needs the ai-edge-litert package "
                                  f"(pip install 'layerscope[tflite]'): {exc}") from None
            path = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
            if not path.is_file():
                raise TargetError(f"ai-edge-litert {litert_version()} has no libLiteRt.so here ({platform.system()} "
                                  f"{platform.machine()}): the LiteRT CPU reference is unavailable on this platform")
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:
                raise TargetError(f"could not load LiteRT's runtime library {path.name}: {exc}") from None
            for name in ("LiteRtDestroyEnvironment", "LiteRtDestroyModel", "LiteRtDestroyOptions",
                         "LiteRtDestroyCompiledModel", "LiteRtDestroyTensorBuffer"):
                getattr(lib, name).restype = None
            libc = ctypes.CDLL(None)
            libc.strdup.restype = ctypes.c_void_p
            libc.strdup.argtypes = [ctypes.c_char_p]
            _library = (lib, libc)
        return _library


def _check(status: int, what: str) -> None:
    if status != 0:
        raise TargetError(f"LiteRT: {what} failed ({_STATUS_NAMES.get(status, f'status {status}')})")


class _CompiledModel:
    """One LiteRT compiled model with its input and output buffers (signature 0)."""

    def __init__(self, path: Path, kernel_mode: str, threads: int, profiling: bool,
                 resize: Optional[Mapping[int, Sequence[int]]] = None):
        """resize: input index -> dims, applied with LiteRT's non-strict resize (which overrides the
        model's fixed shapes) before the buffers are made."""
        lib, libc = _load_library()
        self.lib = lib
        self.handles: list[tuple[str, ctypes.c_void_p]] = []  # destroyed in reverse order
        P = ctypes.c_void_p
        try:
            self.env = self._create("LiteRtCreateEnvironment", "creating the environment", 0, None)
            self.model = self._create("LiteRtCreateModelFromFile", f"reading {path.name}", self.env,
                                      str(path).encode())
            self.handles += [("LiteRtDestroyEnvironment", self.env), ("LiteRtDestroyModel", self.model)]
            options = P()
            _check(lib.LiteRtCreateOptions(ctypes.byref(options)), "creating options")
            self.handles.append(("LiteRtDestroyOptions", options))
            _check(lib.LiteRtSetOptionsHardwareAccelerators(options, _CPU_ACCELERATOR), "choosing the CPU")
            cpu = f'kernel_mode = "{kernel_mode}"\n' + (f"num_threads = {threads}\n" if threads > 0 else "")
            self._add_options(options, _CPU_OPTIONS, cpu, libc)
            if profiling:
                self._add_options(options, _RUNTIME_OPTIONS, "enable_profiling = true\n", libc)
            compiled = P()
            status = lib.LiteRtCreateCompiledModel(self.env, self.model, options, ctypes.byref(compiled))
            if status != 0:
                raise TargetError(f"LiteRT could not compile {path.name} for the CPU ({kernel_mode} kernels, "
                                  f"{_STATUS_NAMES.get(status, f'status {status}')})")
            self.compiled = compiled
            self.handles.append(("LiteRtDestroyCompiledModel", compiled))
            for index, dims in (resize or {}).items():
                array = (ctypes.c_int * len(dims))(*dims)
                status = lib.LiteRtCompiledModelResizeInputTensorNonStrict(
                    compiled, ctypes.c_size_t(0), ctypes.c_size_t(index), array, ctypes.c_size_t(len(dims)))
                if status != 0:
                    raise TargetError(f"LiteRT could not resize input {index} to {'x'.join(map(str, dims))} "
                                      f"({_STATUS_NAMES.get(status, f'status {status}')})")
            signature = P()
            _check(lib.LiteRtGetModelSignature(self.model, ctypes.c_size_t(0), ctypes.byref(signature)),
                   "reading the model's signature")
            self.layouts = self._resized_layouts(signature) if resize else None
            self.inputs = self._buffers(signature, True)
            self.outputs = self._buffers(signature, False)
            self._input_array = (P * len(self.inputs))(*[b for b, _ in self.inputs])
            self._output_array = (P * len(self.outputs))(*[b for b, _ in self.outputs])
            self.profiler = None
            if profiling:
                profiler = P()
                _check(lib.LiteRtCompiledModelGetProfiler(compiled, ctypes.byref(profiler)), "getting the profiler")
                self.profiler = profiler
        except BaseException:
            self.close()
            raise

    def _create(self, function: str, what: str, *arguments) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        status = getattr(self.lib, function)(*arguments, ctypes.byref(handle))
        if status != 0:
            raise TargetError(f"LiteRT: {what} failed ({_STATUS_NAMES.get(status, f'status {status}')})")
        return handle

    def _add_options(self, options, identifier: str, toml: str, libc) -> None:
        # The runtime frees the payload with the destructor given: allocate it with libc.
        payload = libc.strdup(toml.encode())
        opaque = ctypes.c_void_p()
        _check(self.lib.LiteRtCreateOpaqueOptions(identifier.encode(), ctypes.c_void_p(payload),
                                                  ctypes.cast(libc.free, ctypes.c_void_p), ctypes.byref(opaque)),
               f"creating {identifier} options")
        _check(self.lib.LiteRtAddOpaqueOptions(options, opaque), f"adding {identifier} options")

    def _buffers(self, signature, inputs: bool) -> list[tuple[ctypes.c_void_p, int]]:
        lib, P = self.lib, ctypes.c_void_p
        count = ctypes.c_size_t()
        (lib.LiteRtGetNumSignatureInputs if inputs else lib.LiteRtGetNumSignatureOutputs)(signature, ctypes.byref(count))
        buffers = []
        for index in range(count.value):
            tensor = P()
            getter = lib.LiteRtGetSignatureInputTensorByIndex if inputs else lib.LiteRtGetSignatureOutputTensorByIndex
            _check(getter(signature, ctypes.c_size_t(index), ctypes.byref(tensor)), "reading a signature tensor")
            # LiteRtRankedTensorType is passed through untouched: room to spare for its layout.
            tensor_type = ctypes.create_string_buffer(512)
            _check(lib.LiteRtGetRankedTensorType(tensor, tensor_type), "reading a tensor type")
            if self.layouts is not None:  # resized: the buffer must carry the shape the model now runs at
                layout = self.layouts[0 if inputs else 1][index]
                ctypes.memmove(ctypes.addressof(tensor_type) + _LAYOUT_OFFSET, layout, _LAYOUT_BYTES)
            requirements = P()
            requirement_getter = (lib.LiteRtGetCompiledModelInputBufferRequirements if inputs
                                  else lib.LiteRtGetCompiledModelOutputBufferRequirements)
            _check(requirement_getter(self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(index),
                                      ctypes.byref(requirements)), "reading buffer requirements")
            buffer = P()
            _check(lib.LiteRtCreateManagedTensorBufferFromRequirements(self.env, tensor_type, requirements,
                                                                      ctypes.byref(buffer)), "creating a tensor buffer")
            self.handles.append(("LiteRtDestroyTensorBuffer", buffer))
            size = ctypes.c_size_t()
            _check(lib.LiteRtGetTensorBufferSize(buffer, ctypes.byref(size)), "reading a buffer size")
            buffers.append((buffer, size.value))
        return buffers

    def _resized_layouts(self, signature) -> tuple[list[bytes], list[bytes]]:
        """The input and output layouts after a resize (asking for the outputs' with update_allocation
        re-plans the model, so that the buffer requirements read next have the new sizes)."""
        lib = self.lib
        counts = []
        for counter in (lib.LiteRtGetNumSignatureInputs, lib.LiteRtGetNumSignatureOutputs):
            count = ctypes.c_size_t()
            _check(counter(signature, ctypes.byref(count)), "counting signature tensors")
            counts.append(count.value)
        inputs = []
        for index in range(counts[0]):
            layout = ctypes.create_string_buffer(_LAYOUT_BYTES)
            _check(lib.LiteRtGetCompiledModelInputTensorLayout(self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(index),
                                                               layout), "reading a resized input layout")
            inputs.append(layout.raw)
        layouts = ctypes.create_string_buffer(_LAYOUT_BYTES * max(counts[1], 1))
        status = lib.LiteRtGetCompiledModelOutputTensorLayouts(self.compiled, ctypes.c_size_t(0),
                                                               ctypes.c_size_t(counts[1]), layouts, ctypes.c_bool(True))
        if status != 0:
            raise TargetError(f"LiteRT could not plan the model at the new input shape "
                              f"({_STATUS_NAMES.get(status, f'status {status}')})")
        outputs = [layouts.raw[i * _LAYOUT_BYTES:(i + 1) * _LAYOUT_BYTES] for i in range(counts[1])]
        return inputs, outputs

    def write_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        for (buffer, size), array in zip(self.inputs, arrays):
            data = np.ascontiguousarray(array).tobytes()
            if len(data) != size:
                raise TargetError(f"an input has {len(data)} bytes; LiteRT expects {size}")
            address = ctypes.c_void_p()
            _check(self.lib.LiteRtLockTensorBuffer(buffer, ctypes.byref(address), _LOCK_WRITE), "locking an input")
            try:
                ctypes.memmove(address, data, size)
            finally:
                self.lib.LiteRtUnlockTensorBuffer(buffer)

    def run(self) -> None:
        status = self.lib.LiteRtRunCompiledModel(self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(len(self.inputs)),
                                                 self._input_array, ctypes.c_size_t(len(self.outputs)),
                                                 self._output_array)
        if status != 0:
            raise TargetError(f"the LiteRT run failed ({_STATUS_NAMES.get(status, f'status {status}')})")

    def read_outputs(self) -> list[bytes]:
        result = []
        for buffer, size in self.outputs:
            address = ctypes.c_void_p()
            _check(self.lib.LiteRtLockTensorBuffer(buffer, ctypes.byref(address), 0), "locking an output")
            try:
                result.append(ctypes.string_at(address, size))
            finally:
                self.lib.LiteRtUnlockTensorBuffer(buffer)
        return result

    def start_profiler(self) -> None:
        _check(self.lib.LiteRtStartProfiler(self.profiler), "starting the profiler")

    def take_events(self) -> list[Event]:
        """The events recorded since the last call (the profiler is reset after reading)."""
        lib = self.lib
        count = ctypes.c_int()
        _check(lib.LiteRtGetNumProfilerEvents(self.profiler, ctypes.byref(count)), "counting profiler events")
        events = []
        if count.value > 0:
            records = (_ProfiledEventData * count.value)()
            _check(lib.LiteRtGetProfilerEvents(self.profiler, count, records), "reading profiler events")
            for record in records:
                if record.event_type not in _KNOWN_EVENT_TYPES or record.event_source not in (0, 1, 2):
                    raise _LayoutMismatch(f"an event of type {record.event_type} from source {record.event_source}")
                tag = ctypes.string_at(record.tag).decode("utf-8", "replace") if record.tag else ""
                events.append(Event(tag, record.event_type, record.start_timestamp_us, record.elapsed_time_us,
                                    record.event_metadata1, record.event_metadata2))
        # Reset empties the profiler and also stops it (2.3.0): start it again for the next run.
        _check(lib.LiteRtResetProfiler(self.profiler), "resetting the profiler")
        _check(lib.LiteRtStartProfiler(self.profiler), "starting the profiler")
        return events

    def close(self) -> None:
        while self.handles:
            function, handle = self.handles.pop()
            getattr(self.lib, function)(handle)


class _LayoutMismatch(Exception):
    """Profiler records that do not look like the ProfiledEventData this module reads."""


# ============================================================================ mapping events

@dataclass(frozen=True)
class DelegateMapping:
    """How one run's events map to operators: groups of event positions -> the node ids they cover."""
    groups: tuple[tuple[str, str, tuple[int, ...], tuple[str, ...]], ...]  # (group id, kernel, positions, node ids)
    warnings: tuple[str, ...] = ()


def map_delegate_events(events: Sequence[Event], operator_ids: Sequence[str], op_types: Mapping[str, str],
                        constant_ids: frozenset = frozenset()) -> DelegateMapping:
    """Map one deployed-mode run's events (in time order) to the operators of the main graph.

    `operator_ids` are the main graph's operators in execution order.  Operator events (LiteRT
    kernels) name their operator; runs of delegate events between them stand for the delegated
    operators between those operators.  Constant operators (a DEQUANTIZE of stored fp16 weights,
    which XNNPACK folds at load) join the group of the operator after them.
    """
    from importers.tflite import operator_node_id

    position_of = {node_id: i for i, node_id in enumerate(operator_ids)}
    groups: list[tuple[str, str, tuple[int, ...], tuple[str, ...]]] = []
    warnings: list[str] = []
    segment: list[int] = []  # positions of delegate events in the current segment
    previous_operator = -1

    def close_segment(next_operator: int) -> None:
        nonlocal segment
        delegated = [operator_ids[i] for i in range(previous_operator + 1, next_operator)]
        if segment or delegated:
            groups.extend(_map_segment([events[p] for p in segment], segment, delegated, op_types, constant_ids,
                                       len(groups), warnings))
        segment = []

    for position, event in enumerate(events):
        if event.event_type == DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT:
            segment.append(position)
        elif event.event_type == OPERATOR_INVOKE_EVENT:
            node_id = operator_node_id(int(event.metadata2), int(event.metadata1))
            index = position_of.get(node_id)
            if index is None:
                continue  # an operator of a control-flow body: timed within its parent
            close_segment(index)
            groups.append((node_id, event.tag, (position,), (node_id,)))
            previous_operator = index
    close_segment(len(operator_ids))
    return DelegateMapping(tuple(groups), tuple(warnings))


def _map_segment(events: Sequence[Event], positions: Sequence[int], delegated: Sequence[str],
                 op_types: Mapping[str, str], constant_ids: frozenset, first_group: int, warnings: list[str]):
    """Groups of one delegated segment: anchors one to one, the operators between them shared."""
    group_id = f"xnnpack:{first_group}"
    if not events:  # operators with no delegate event and no kernel event: nothing ran them
        return []
    anchors = [node_id for node_id in delegated if op_types.get(node_id) in ANCHOR_OPS]
    anchor_events = [i for i, e in enumerate(events) if e.tag.startswith(_XNNPACK_ANCHOR_PREFIXES)]
    if len(anchors) != len(anchor_events):
        warnings.append(f"XNNPACK ran {len(anchor_events)} convolution-like operators for {len(anchors)} in the model "
                        f"({len(delegated)} operators, {len(events)} XNNPACK operators): their time is one group, "
                        "attributed to those operators by FLOPs")
        return [(group_id, f"XNNPACK ({len(events)} operators)", tuple(positions), tuple(delegated))]
    # Parts in order: gap 0, anchor 0, gap 1, anchor 1, ...: anchor k is part 2k+1, the gap after it 2k+2.
    parts = len(anchors) * 2 + 1
    operator_parts: list[list[str]] = [[] for _ in range(parts)]
    event_parts: list[list[int]] = [[] for _ in range(parts)]
    seen_anchors, pending_constants = 0, []
    for node_id in delegated:
        if node_id in constant_ids:
            pending_constants.append(node_id)  # folded by XNNPACK at load: goes with the anchor that reads it
        elif op_types.get(node_id) in ANCHOR_OPS:
            operator_parts[2 * seen_anchors + 1] += pending_constants + [node_id]
            pending_constants, seen_anchors = [], seen_anchors + 1
        else:
            operator_parts[2 * seen_anchors].append(node_id)
    operator_parts[2 * seen_anchors] += pending_constants
    seen_anchors = 0
    for index in range(len(events)):
        if index in anchor_events:
            event_parts[2 * seen_anchors + 1].append(index)
            seen_anchors += 1
        else:
            event_parts[2 * seen_anchors].append(index)
    result: list[tuple[str, str, tuple[int, ...], tuple[str, ...]]] = []
    carry: list[str] = []  # operators of a gap XNNPACK ran nothing for (fused): join a neighbouring kernel
    for nodes, indexes in zip(operator_parts, event_parts):
        if not indexes:
            if nodes and result:
                gid, kernel, covered_positions, covered = result[-1]
                result[-1] = (gid, kernel, covered_positions, covered + tuple(nodes))
            else:
                carry += nodes
            continue
        kernel = " + ".join(events[i].tag for i in indexes)
        result.append((f"{group_id}.{len(result)}", kernel, tuple(positions[i] for i in indexes),
                       tuple(carry + nodes)))
        carry = []
    if carry and result:
        gid, kernel, covered_positions, covered = result[-1]
        result[-1] = (gid, kernel, covered_positions, covered + tuple(carry))
    return result


# ============================================================================ the target

def describe_cpu(threads: int = 0) -> dict:
    from engine.targets.cpu import _cpu_model, _memory_bytes
    return {"name": "cpu", "kind": "cpu-reference", "device": platform.node() or "this computer",
            "os": f"{platform.system()} {platform.release()}".strip(), "chip": _cpu_model(),
            "architecture": platform.machine(), "cpu_count": os.cpu_count(), "compute_units": ["CPU"],
            "memory_bytes": _memory_bytes(), "runtime": f"LiteRT (ai-edge-litert {litert_version()})",
            "providers": ["LiteRT CPU"], "threads": threads}


_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64,
                 "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "bool": np.bool_, "float64": np.float64}


@dataclass
class _Prepared:
    key: tuple
    settings: ProfileSettings
    model_path: Path
    model: Model
    analysis: Any
    plain: _CompiledModel
    feed: dict[str, np.ndarray]
    resize: dict[int, tuple[int, ...]]  # input index -> the shape it was resized to (non-strict)
    stored_shapes: dict[str, tuple[int, ...]]  # name -> shape stored in the model, of the inputs resized


class LiteRtCpuTarget(PreparedModelTarget):
    """LiteRT on this computer's CPU.  Not thread-safe: one profile at a time per instance."""

    name = "cpu"

    def close(self) -> None:
        if self._prepared is not None:
            self._prepared.plain.close()
            self._prepared = None

    def describe(self) -> dict:
        return describe_cpu(self._prepared.settings.threads if self._prepared else 0)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(array.shape) for name, array in self.inputs.items()}

    @property
    def folded_node_ids(self) -> list[str]:
        return []  # LiteRT runs every operator (a constant DEQUANTIZE too): nothing is folded away

    @property
    def load_warnings(self) -> list[str]:
        return list(self._prepared.model.warnings) if self._prepared else []

    def prepare(self, model_path, settings: Optional[ProfileSettings] = None) -> None:
        from engine.analysis import analyze
        from importers import tflite

        settings = settings or ProfileSettings()
        path = Path(model_path)
        if not path.exists():
            raise ModelLoadError(str(path), "no such file or directory")
        model = tflite.load(path)
        resize: dict[int, tuple[int, ...]] = {}
        stored_shapes: dict[str, tuple[int, ...]] = {}
        if settings.size is not None or settings.input_shapes:
            resize, shapes = self._resized_inputs(model, settings)
            graph = model.main_graph
            stored_shapes = {graph.inputs[i]: tuple(graph.value_type(graph.inputs[i]).shape or ()) for i in resize}
            model = tflite.load(path, input_shapes=shapes)
        analysis = analyze(model)
        feed = self._make_inputs(model, settings)
        try:
            plain = _CompiledModel(path, self._kernel_mode(settings), settings.threads, profiling=False,
                                   resize=resize)
        except TargetError as exc:
            raise TargetError(_resize_refused(exc, path, settings, model, stored_shapes) if resize else str(exc)) from None
        try:
            plain.write_inputs(list(feed.values()))
            plain.run()
        except TargetError as exc:
            plain.close()
            raise TargetError(_resize_refused(exc, path, settings, model, stored_shapes) if resize
                              else _run_refused(exc, model, settings)) from None
        self.close()
        self._prepared = _Prepared(settings.session_key(), settings, path, model, analysis, plain, feed, resize,
                                   stored_shapes)

    @staticmethod
    def _resized_inputs(stored: Model, settings: ProfileSettings):
        """(input index -> dims to resize to, input name -> shape) for --size / --shape.

        A .tflite stores fixed input shapes; LiteRT's non-strict resize overrides them, so every
        dimension may be set: --shape sets whole shapes, --size the height and width of NHWC images.
        """
        from engine.targets.cpu import resolve_input_shapes
        graph = stored.main_graph
        relaxed = []
        for name in graph.inputs:
            value_type = graph.value_type(name)
            dims = list(value_type.shape) if value_type is not None and value_type.shape is not None else None
            if dims is not None and name in settings.input_shapes:
                dims = [None] * len(dims)  # any dimension may change (the rank is still checked)
            elif dims is not None and settings.size is not None and len(dims) == 4:
                dims[1] = dims[2] = None  # TFLite images are NHWC
            relaxed.append((name, dims))
        shapes = resolve_input_shapes(relaxed, settings)
        resize = {}
        for index, name in enumerate(graph.inputs):
            value_type = graph.value_type(name)
            if value_type is None or tuple(value_type.shape or ()) != shapes[name]:
                resize[index] = shapes[name]
        return resize, shapes

    @staticmethod
    def _kernel_mode(settings: ProfileSettings) -> str:
        return "builtin" if settings.mode == MODE_EXACT else "delegate"

    @staticmethod
    def _make_inputs(model: Model, settings: ProfileSettings) -> dict[str, np.ndarray]:
        graph = model.main_graph
        rng = np.random.default_rng(settings.seed)
        npz = None
        if settings.inputs not in ("random", "zeros"):
            from engine.targets.cpu import read_npz
            npz = read_npz(settings.inputs)
        feed = {}
        for name in graph.inputs:
            value_type = graph.value_type(name)
            if value_type is None or not value_type.is_static:
                raise TargetError(f"input '{name}' has no fixed shape; the LiteRT CPU reference needs one")
            dtype = _NUMPY_DTYPES.get(value_type.dtype)
            if dtype is None:
                raise TargetError(f"input '{name}' is {value_type.dtype}, which the LiteRT CPU reference cannot fill")
            shape = tuple(int(d) for d in value_type.shape)  # type: ignore[union-attr]
            if npz is not None:
                if name not in npz:
                    raise TargetError(f"{settings.inputs} has no array named '{name}' (it has: {', '.join(npz)})")
                array = np.asarray(npz[name], dtype=dtype)
                if array.shape != shape:
                    raise TargetError(f"array '{name}' in {settings.inputs} has shape {array.shape}; the model "
                                      f"takes {shape}")
            elif settings.inputs == "zeros":
                array = np.zeros(shape, dtype)
            elif np.issubdtype(dtype, np.floating):
                array = rng.random(shape, dtype=np.float32).astype(dtype)
            elif dtype is np.bool_:
                array = rng.integers(0, 2, shape).astype(bool)
            else:
                info = np.iinfo(dtype)
                array = rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dtype)
            feed[name] = array
        return feed

    def run(self, inputs: Optional[Mapping[str, Any]] = None) -> dict[str, np.ndarray]:
        prepared, feed = self._plain_feed(inputs)
        prepared.plain.write_inputs(list(feed.values()))
        prepared.plain.run()
        graph = prepared.model.main_graph
        result = {}
        for name, raw in zip(graph.outputs, prepared.plain.read_outputs()):
            value_type = graph.value_type(name)
            dtype = _NUMPY_DTYPES.get(value_type.dtype if value_type else "", np.uint8)
            array = np.frombuffer(raw, dtype=dtype)
            if value_type is not None and value_type.is_static and array.size == value_type.element_count:
                array = array.reshape(value_type.shape)
            result[name] = array.copy()
        return result

    def profile(self, settings: Optional[ProfileSettings] = None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None, model_path=None) -> Profile:
        """Warm up, then alternate plain and profiled runs; per-operator times from LiteRT's profiler."""
        settings = settings or (self._prepared.settings if self._prepared else ProfileSettings())
        prepared = self._ensure(settings, model_path)
        version = litert_version()
        per_operator = version in TESTED_VERSIONS
        warnings: list[str] = []
        if not per_operator:
            warnings.append(f"ai-edge-litert {version} is not a version whose profiler records LayerScope reads "
                            f"(tested: {', '.join(TESTED_VERSIONS)}): per-operator times are unavailable, the whole "
                            "model was timed (install the tested version for per-operator times)")
        profiled = _CompiledModel(prepared.model_path, self._kernel_mode(settings), settings.threads,
                                  profiling=per_operator, resize=prepared.resize)
        stored = prepared.stored_shapes
        if stored:
            warnings.append("inputs resized from the shapes stored in the model ("
                            + ", ".join(f"{name} {'x'.join(map(str, old))} -> "
                                        f"{'x'.join(map(str, prepared.feed[name].shape))}"
                                        for name, old in stored.items())
                            + ") with LiteRT's non-strict resize, which overrides the model's fixed shapes: "
                              "the model was not built for this size, so its outputs may mean nothing")
        plain = prepared.plain
        feed = list(prepared.feed.values())
        plain.write_inputs(feed)
        profiled.write_inputs(feed)
        total = settings.warmup + settings.runs
        plain_ms: list[float] = []
        plain_cpu_ms: list[float] = []  # CPU time of this thread during the plain runs
        profiled_ms: list[float] = []
        run_events: list[list[Event]] = []
        error, interrupted = "", False
        clock = time.perf_counter
        try:
            if per_operator:
                profiled.start_profiler()
            for index in range(total):
                if cancel is not None and cancel.is_set():
                    break
                is_warmup = index < settings.warmup
                try:
                    cpu_start = time.thread_time()
                    start = clock()
                    plain.run()
                    middle = clock()
                    cpu_used = time.thread_time() - cpu_start
                    profiled.run()
                    end = clock()
                    events = profiled.take_events() if per_operator else []
                except TargetError as exc:
                    what = f"warm-up run {index + 1}" if is_warmup else f"run {index - settings.warmup + 1}"
                    error = f"{what} failed: {exc}"
                    break
                except _LayoutMismatch as exc:
                    per_operator = False
                    run_events.clear()
                    warnings.append(f"LiteRT's profiler gave records LayerScope cannot read ({exc}): per-operator "
                                    "times are unavailable, the whole model was timed")
                    events = []
                if is_warmup:
                    message = f"warm-up {index + 1}/{settings.warmup}"
                else:
                    plain_ms.append((middle - start) * 1000.0)
                    plain_cpu_ms.append(cpu_used * 1000.0)
                    profiled_ms.append((end - middle) * 1000.0)
                    run_events.append(sorted((e for e in events if e.event_type in
                                              (OPERATOR_INVOKE_EVENT, DELEGATE_PROFILED_OPERATOR_INVOKE_EVENT)),
                                             key=lambda e: e.start_us))
                    message = f"run {len(plain_ms)}/{settings.runs}: {plain_ms[-1]:.2f} ms"
                if progress is not None:
                    try:
                        progress(index + 1, total, message)
                    except Exception as exc:
                        error = f"stopped after {message}: {type(exc).__name__}: {exc}"
                        break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            profiled.close()
        completed = len(plain_ms)
        if interrupted and not error:
            error = "interrupted"
        elif cancel is not None and cancel.is_set() and completed < settings.runs and not error:
            error = "cancelled"
        if per_operator:
            groups, nodes, more = self._timings(prepared, settings, run_events)
        else:
            groups, nodes, more = self._whole_model(profiled_ms)
        warnings += more
        from engine.targets.cpu import BUSY_WAIT_SHARE, _cpu_wait_share
        wait_share = _cpu_wait_share(plain_ms, plain_cpu_ms) if settings.threads == 1 else None
        if wait_share is not None and wait_share > BUSY_WAIT_SHARE:
            warnings.append(f"this computer was busy: the runs spent {wait_share * 100:.0f} % of their time waiting "
                            "for a CPU (wall against CPU time), which inflates end-to-end times and lowers "
                            "coverage; per-layer medians suffer less. Profile again when it is idle")
        analysis = prepared.analysis
        profile_settings = {"runs": settings.runs, "warmup": settings.warmup, "threads": settings.threads,
                            "effective_threads": settings.threads or os.cpu_count(),
                            "input_mode": "npz" if settings.inputs not in ("random", "zeros") else settings.inputs,
                            "inputs_file": settings.inputs if settings.inputs not in ("random", "zeros") else None,
                            "seed": settings.seed,
                            "input_shapes": {k: list(v.shape) for k, v in prepared.feed.items()},
                            "size": list(settings.size) if settings.size else None,
                            "resized_from": {k: list(v) for k, v in prepared.stored_shapes.items()} or None,
                            "runtime": f"LiteRT {version}",
                            "kernels": "builtin" if settings.mode == MODE_EXACT else "XNNPACK (default CPU delegate)"}
        return Profile.build(
            model_path=str(prepared.model_path), model_format=prepared.model.format,
            target=describe_cpu(settings.threads), mode=settings.mode, settings=profile_settings,
            end_to_end_samples=plain_ms, profiled_samples=profiled_ms, groups=groups, nodes=nodes,
            runs_completed=completed, complete=completed == settings.runs and not error, error=error,
            stage_order=[s.name for s in analysis.stages], warnings=list(prepared.model.warnings) + warnings,
            cpu_wait_share=wait_share)

    @staticmethod
    def _whole_model(profiled_ms: Sequence[float]):
        if not profiled_ms:
            return [], [], []
        stats = TimingStats.from_samples(profiled_ms, MEASURED)
        return [TimingGroup("model", "whole model (per-operator profiler unavailable)", (), stats, "model")], [], []

    def _timings(self, prepared: _Prepared, settings: ProfileSettings, run_events: list[list[Event]]):
        if not run_events:
            return [], [], []
        from importers.tflite import operator_node_id

        analysis = prepared.analysis
        graph = prepared.model.main_graph
        operator_ids = [node.id for node in graph.nodes]  # LiteRT runs subgraph 0 in operator order
        op_types = {node.id: node.op_type for node in graph.nodes}
        warnings: list[str] = []
        if settings.mode == MODE_EXACT:
            per_run = []
            foreign = 0
            for events in run_events:
                times: dict[str, float] = {}
                for event in events:
                    node_id = operator_node_id(int(event.metadata2), int(event.metadata1))
                    if node_id not in op_types:
                        foreign += 1
                        continue
                    times[node_id] = times.get(node_id, 0.0) + event.elapsed_us / 1000.0
                per_run.append(times)
            if foreign:
                warnings.append(f"{foreign // len(run_events)} operator event(s) per run belong to control-flow "
                                "bodies: counted within their parent operator")
            mapping = [(node_id, op_types[node_id], None, (node_id,)) for node_id in operator_ids]
            samples = {node_id: [run.get(node_id, 0.0) for run in per_run] for node_id in operator_ids}
            seen = set().union(*per_run)
        else:
            constants = frozenset(i for i in operator_ids if analysis.nodes[i].is_constant)
            first = map_delegate_events(run_events[0], operator_ids, op_types, constants)
            warnings += first.warnings
            tags = [e.tag for e in run_events[0]]
            kept = [events for events in run_events if [e.tag for e in events] == tags]
            if len(kept) < len(run_events):
                warnings.append(f"{len(run_events) - len(kept)} run(s) ran a different sequence of kernels than the "
                                "first and were left out of the per-operator figures")
            mapping = list(first.groups)
            samples = {gid: [sum(events[p].elapsed_us for p in positions) / 1000.0 for events in kept]
                       for gid, _, positions, _ in mapping}
            seen = {gid for gid, *_ in mapping}
        groups: list[TimingGroup] = []
        timed: dict[str, NodeTiming] = {}
        for group_id, kernel, _, node_ids in mapping:
            if group_id not in seen:
                continue
            stats = TimingStats.from_samples(samples[group_id], MEASURED)
            kernel_op = "+".join(sorted({op_types.get(n, "?") for n in node_ids})) if node_ids else "runtime"
            groups.append(TimingGroup(group_id, kernel, tuple(node_ids), stats, kernel_op))
            if len(node_ids) == 1:
                metrics = analysis.nodes[node_ids[0]]
                timed[node_ids[0]] = NodeTiming(node_ids[0], metrics.op_type, metrics.stage, stats, group_id,
                                                MEASURED, metrics.output_bytes, None, compute_unit="CPU",
                                                compute_unit_kind=MEASURED)
                continue
            weights = [0.0 if analysis.nodes[n].is_constant else float(analysis.nodes[n].flops or 0) for n in node_ids]
            total = sum(weights)
            if total <= 0:
                weights = [0.0 if analysis.nodes[n].is_constant else 1.0 for n in node_ids]
                total = sum(weights) or 1.0
            for node_id, weight in zip(node_ids, weights):
                metrics = analysis.nodes[node_id]
                timed[node_id] = NodeTiming(node_id, metrics.op_type, metrics.stage,
                                            stats.scaled(weight / total, ATTRIBUTED), group_id, ATTRIBUTED,
                                            metrics.output_bytes, None, compute_unit="CPU", compute_unit_kind=MEASURED)
        nodes = [timed[i] for i in analysis.order if i in timed]
        missing = [i for i in operator_ids if i not in timed]
        if missing:
            warnings.append(f"{len(missing)} operator(s) have no time (LiteRT reported no event for them): "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return groups, nodes, warnings


def _resize_refused(exc: TargetError, path: Path, settings: ProfileSettings, model: Model,
                    stored_shapes: Mapping[str, Sequence[int]]) -> str:
    """One line for a model LiteRT cannot run at the size asked for."""
    if settings.size is not None:
        asked = f"size {settings.size[0]}x{settings.size[1]}"
    else:
        asked = "shape " + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in settings.input_shapes.items())
    stored = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in stored_shapes.items())
    why = next((w[w.find("(") + 1:w.rfind("): shapes")] for w in model.warnings
                if w.startswith(_PROPAGATION_FAILED)), "")  # the operator LiteRT's interpreter named
    return (f"{path.name} cannot run at {asked}: {exc}; the model's shapes are fixed and an operator does not "
            f"follow a resized input{f' ({why})' if why else ''}: profile it at its stored shape ({stored})")


def _run_refused(exc: TargetError, model: Model, settings: ProfileSettings) -> str:
    """A clear line for a model LiteRT will not compile or run here."""
    custom = model.metadata.get("custom_ops", "")
    if custom:
        # One text for the CLI and the app: it names the flag and the Run dialog's setting.
        where = ("LiteRT's builtin kernels (exact mode) do not include them; try the deployed mode (--mode "
                 "deployed, or Mode: deployed in the Run dialog; XNNPACK implements some of mediapipe's custom "
                 "ops)" if settings.mode == MODE_EXACT
                 else "neither XNNPACK nor LiteRT's builtin kernels include them")
        return f"{exc}: the model uses custom ops ({custom}) and {where}"
    return str(exc)
