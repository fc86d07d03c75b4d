"""CPU reference target: ONNX Runtime on this computer.

Two modes (DESIGN.md):

- exact: `ORT_DISABLE_ALL`, every source node is its own kernel and gets its own timing.
- deployed: `ORT_ENABLE_ALL`, as a deployment runs.  ORT fuses nodes (Conv+BN+Relu
  become one kernel, NCHWc layout kernels are inserted); the optimized graph
  is saved (`optimized_model_filepath`) by the very session that is profiled,
  and each kernel is mapped to the source nodes lying between its input and
  output tensors (`map_kernels_to_source`).  The mapping is checked: every
  source compute node belongs to exactly one timing group.

The model ORT runs is a session copy of the file:

- every node is named after its IR id, so profile events (named after nodes)
  map back to ids exactly, whatever names the file had (empty, duplicated);
- input shapes are fixed (free batch = 1, the size or shapes asked for);
- nodes that static analysis finds constant (the onnx light zoo builds its
  weights with ConstantOfShape) are evaluated once, by ORT, and replaced by
  initializers, as a deployed runtime does; they are listed as untimed.

Per-node times come from ORT's profiler: `Node` events named
`<node>_kernel_time`, `dur` in microseconds, bucketed into runs by the
`model_run` events.  End-to-end latency comes from a second session without
the profiler, run alternately with the profiled one so that both see the same
machine state; the ratio gives the profiler overhead.
"""
from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from engine.ir import Graph, Model, ModelLoadError
from engine.profile import (ATTRIBUTED, MEASURED, MODE_DEPLOYED, MODE_EXACT, NodeTiming, Profile, TimingGroup,
                            TimingStats)
from engine.targets.prepared import PreparedModelTarget
from engine.targets.settings import ProfileSettings, ProgressCallback, TargetError

try:  # the target must import (and say why it cannot run) even where ORT is missing
    import onnxruntime as ort
except ImportError as _exc:  # pragma: no cover - onnxruntime is a hard dependency
    ort = None
    _ORT_IMPORT_ERROR = str(_exc)

__all__ = ["CpuTarget", "map_kernels_to_source", "parse_profile_events", "resolve_input_shapes",
           "COREML_MESSAGE"]

# A Core ML model is already converted: it runs only on Core ML, i.e. on a Mac (or its iPhones).
COREML_MESSAGE = ("the CPU reference runs ONNX models and this model is already Core ML, which runs only on "
                  "Apple's Core ML: start `layerscope agent` on a Mac and choose its address "
                  "(ws://HOST:PORT) as the target; for a CPU reference, profile the ONNX model it was "
                  "converted from (here it is graph-only)")

# ORT kernels that only change the memory layout of a tensor (the NCHWc transformer inserts them):
# their output holds the same values as their input, so they carry tensor identity across.
_LAYOUT_OPS = {"ReorderInput", "ReorderOutput"}
# Suffixes ORT appends to a tensor name to name the kernel that now produces that tensor.
_KERNEL_NAME_SUFFIXES = ("_nchwc",)
_KERNEL_EVENT_SUFFIX = "_kernel_time"
# Above this size the session copy keeps its weights in a side file (protobuf's 2 GB limit).
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


# ============================================================================ describe

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            import subprocess
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.machine()
        except Exception:
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_bytes() -> Optional[int]:
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def describe_cpu(threads: int = 0) -> dict:
    return {
        "name": "cpu",
        "kind": "cpu-reference",
        "device": platform.node() or "this computer",
        "os": f"{platform.system()} {platform.release()}".strip(),
        "chip": _cpu_model(),
        "architecture": platform.machine(),
        "cpu_count": os.cpu_count(),
        "compute_units": ["CPU"],
        "memory_bytes": _memory_bytes(),
        "runtime": f"onnxruntime {ort.__version__}" if ort is not None else "onnxruntime (not installed)",
        "providers": ["CPUExecutionProvider"],
        "threads": threads,
    }


# ============================================================================ input shapes

def _dims_text(dims: Sequence) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in dims)


def _spatial_axes(dims: Sequence) -> tuple[int, int]:
    """Height and width axes of a rank-4 image input: NCHW unless it looks like NHWC."""
    def small(d):
        return isinstance(d, int) and 0 < d <= 4
    if small(dims[3]) and not small(dims[1]):
        return 1, 2
    return 2, 3


def resolve_input_shapes(graph_inputs: Sequence[tuple[str, Sequence]], settings: ProfileSettings,
                         npz_shapes: Mapping[str, Sequence[int]] = {}) -> dict[str, tuple[int, ...]]:
    """The concrete shape of every input: explicit shapes, then a .npz's arrays, then --size, then batch 1.

    graph_inputs: (name, dims) with dims ints, symbolic names or None.  Raises
    TargetError naming the input when a fixed dimension is asked to change or
    a free one is left unknown.
    """
    names = [name for name, _ in graph_inputs]
    for name in settings.input_shapes:
        if name not in names:
            raise TargetError(f"an input shape was given for '{name}', but the model's inputs are: "
                              f"{', '.join(names)}")
    image_inputs = [name for name, dims in graph_inputs if dims is not None and len(dims) == 4]
    if settings.size is not None and not image_inputs:
        raise TargetError(f"a size (HxW) applies to image inputs of rank 4, and this model has none "
                          f"(inputs: {', '.join(f'{n} {_dims_text(d or [])}' for n, d in graph_inputs)}); "
                          "give full shapes instead")
    resolved: dict[str, tuple[int, ...]] = {}
    for name, dims in graph_inputs:
        given = settings.input_shapes.get(name) or npz_shapes.get(name)
        if dims is None:
            if given is None:
                raise TargetError(f"input '{name}' has no shape in the model; give one, e.g. "
                                  f"--shape {name}=1x3x224x224")
            resolved[name] = tuple(given)
            continue
        dims = list(dims)
        if given is not None:
            given = list(given)
            if len(given) != len(dims):
                raise TargetError(f"input '{name}' has rank {len(dims)} ({_dims_text(dims)}), "
                                  f"but the shape given has {len(given)} dimensions ({_dims_text(given)})")
            for axis, (have, want) in enumerate(zip(dims, given)):
                if isinstance(have, int) and have > 0 and have != want:
                    raise TargetError(f"input '{name}' has a fixed shape {_dims_text(dims)}: dimension {axis} "
                                      f"is {have} and cannot be set to {want}")
            resolved[name] = tuple(int(d) for d in given)
            continue
        if settings.size is not None and len(dims) == 4:
            h_axis, w_axis = _spatial_axes(dims)
            for axis, want in ((h_axis, settings.size[0]), (w_axis, settings.size[1])):
                have = dims[axis]
                if isinstance(have, int) and have > 0 and have != want:
                    raise TargetError(
                        f"input '{name}' has a fixed shape {_dims_text(dims)}, so its size cannot be set to "
                        f"{settings.size[0]}x{settings.size[1]}: profile it at "
                        f"{dims[h_axis]}x{dims[w_axis]} (leave out the size), or export the model with "
                        "free height and width")
                dims[axis] = int(want)
        if dims and not (isinstance(dims[0], int) and dims[0] > 0):
            dims[0] = 1  # a free batch dimension: one sample, as on a phone
        free = [axis for axis, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
        if free:
            hint = " (a size HxW sets the spatial ones)" if len(dims) == 4 else ""
            raise TargetError(f"input '{name}' has free dimensions ({_dims_text(list(dims))}) at "
                              f"{', '.join(map(str, free))}: give its shape{hint}, e.g. "
                              f"--shape {name}={'x'.join(str(d) if isinstance(d, int) and d > 0 else 'N' for d in dims)}")
        resolved[name] = tuple(int(d) for d in dims)
    return resolved


# ============================================================================ inputs

_ORT_TYPE_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def _make_inputs(session_inputs, shapes: Mapping[str, tuple[int, ...]], mode: str, seed: int,
                 npz: Optional[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for info in session_inputs:
        dtype = _ORT_TYPE_TO_NUMPY.get(info.type)
        if dtype is None:
            raise TargetError(f"input '{info.name}' has type {info.type}, which LayerScope cannot generate "
                              "values for; give the inputs in a .npz file")
        shape = shapes[info.name]
        if npz is not None:
            array = np.asarray(npz[info.name])
            if tuple(array.shape) != tuple(shape):
                raise TargetError(f"input '{info.name}': the .npz array has shape {_dims_text(array.shape)}, "
                                  f"the model needs {_dims_text(shape)}")
            feed[info.name] = np.ascontiguousarray(array.astype(dtype, copy=False))
        elif mode == "zeros":
            feed[info.name] = np.zeros(shape, dtype)
        elif dtype == np.bool_:
            feed[info.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            # Small non-negative integers: valid indices for embeddings and gathers.
            feed[info.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feed[info.name] = rng.random(shape, dtype=np.float64).astype(dtype)
    return feed


def read_npz(source, max_bytes: Optional[int] = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (a path, or its bytes).

    With `max_bytes`, the sizes the archive declares and the shapes in each
    array's header are checked against it before any array is read: a
    half-megabyte compressed file cannot make hundreds of megabytes appear.
    Raises ValueError (what is wrong) or OSError.
    """
    handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    if max_bytes is not None:
        with zipfile.ZipFile(handle) as archive:
            declared = sum(info.file_size for info in archive.infolist())
            if declared > max_bytes + 4096 * len(archive.infolist()):
                raise ValueError(f"its arrays take {declared:,} bytes unpacked, more than the {max_bytes:,} "
                                 "allowed here")
            total = 0
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"array format {version} is not supported (1.0 and 2.0 are)")
                total += int(np.prod(shape, dtype=object)) * dtype.itemsize
                if total > max_bytes:
                    raise ValueError(f"its arrays declare more than the {max_bytes:,} bytes allowed here")
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
    with np.load(handle, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _load_npz(path: str, input_names: Sequence[str], max_bytes: Optional[int] = None) -> dict[str, np.ndarray]:
    try:
        arrays = read_npz(path, max_bytes)
    except FileNotFoundError:
        raise TargetError(f"inputs file {path}: no such file") from None
    except Exception as exc:
        raise TargetError(f"inputs file {path} is not a readable .npz file ({str(exc)[:200]})") from None
    if len(arrays) == 1 and len(input_names) == 1 and input_names[0] not in arrays:
        arrays = {input_names[0]: next(iter(arrays.values()))}
    missing = [name for name in input_names if name not in arrays]
    if missing:
        raise TargetError(f"inputs file {path} has no array for input(s) {', '.join(missing)} "
                          f"(it has: {', '.join(arrays) or 'nothing'}); name the arrays after the model's inputs")
    return arrays


# ============================================================================ session copy

def _check_onnx_file(path: Path) -> None:
    from importers import importer_for
    try:
        module = importer_for(path)
    except ModelLoadError:
        raise
    if module.FORMAT != "onnx":
        if module.FORMAT.startswith("coreml"):
            raise TargetError(f"{path}: {COREML_MESSAGE}")
        raise TargetError(f"{path}: the CPU reference runs ONNX models; this is a {module.FORMAT} model")


def _subgraph_references(node: onnx.NodeProto) -> set[str]:
    """Every tensor name read inside a node's subgraphs (outer-scope values included)."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(n for n in inner.input if n)
                names |= _subgraph_references(inner)
    return names


def _fold_constant_nodes(proto: onnx.ModelProto, ir_graph: Graph, constant_ids: set[str]
                         ) -> tuple[list[str], list[str]]:
    """Replace the nodes static analysis found constant by initializers computed by ORT.

    Works on `proto` in place (whose nodes are already named by IR id).  Returns
    (ids of the folded nodes, warnings).  A failure leaves the model unfolded:
    the constant nodes then run and are timed like any other.
    """
    graph = proto.graph
    constant_nodes = [n for n in graph.node if n.name in constant_ids]
    if not constant_nodes:
        return [], []
    constant_outputs = {out for n in constant_nodes for out in n.output if out}
    needed: set[str] = set(o.name for o in graph.output)
    for node in graph.node:
        if node.name not in constant_ids:
            needed.update(n for n in node.input if n)
            needed |= _subgraph_references(node)
    frontier = [name for n in constant_nodes for name in n.output if name and name in needed]

    # Shape of an activation whose shape is static: its value comes from the type, not a run.
    values: dict[str, np.ndarray] = {}
    run_nodes = []
    for node in constant_nodes:
        source = node.input[0] if node.input else ""
        if node.op_type == "Shape" and source not in constant_outputs and not any(
                t.name == source for t in graph.initializer):
            value_type = ir_graph.value_type(source)
            if value_type is None or not value_type.is_static:
                return [], [f"constant folding skipped: the shape of '{source}' is not static"]
            dims = list(value_type.shape)
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            values[node.output[0]] = np.array(dims[start:end], dtype=np.int64)
        else:
            run_nodes.append(node)
    to_run = [name for name in frontier if name not in values]
    read_by_constants = {name for n in run_nodes for name in n.input if name}
    if to_run:
        sub = onnx.helper.make_graph(
            [onnx.NodeProto.FromString(n.SerializeToString()) for n in run_nodes], "constants", [],
            [onnx.helper.make_empty_tensor_value_info(name) for name in to_run],
            initializer=[t for t in graph.initializer if t.name in read_by_constants]
            + [numpy_helper.from_array(v, k) for k, v in values.items()])
        sub_model = onnx.helper.make_model(sub, opset_imports=list(proto.opset_import))
        sub_model.ir_version = max(proto.ir_version, 4)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 4
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(sub_model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            results = session.run(to_run, {})
        except Exception as exc:
            return [], [f"constant folding skipped ({_short_ort_message(exc)}): the constant nodes run "
                        "and are timed with the others"]
        values.update(zip(to_run, results))
        del session
    folded_ids = [n.name for n in constant_nodes]
    keep = [n for n in graph.node if n.name not in constant_ids]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(numpy_helper.from_array(np.asarray(values[name]), name) for name in frontier)
    return folded_ids, []


def _short_ort_message(exc: BaseException) -> str:
    """ORT's message without its status prefix, temp-file path and C++ source location."""
    text = str(exc).strip()
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    text = re.sub(r"Load model from \S+ failed:\s*", "", text)
    text = re.sub(r"\S*onnxruntime_src/\S+:\d+\s+", "", text)
    signature = re.match(r"^[^()]*?onnxruntime::[\w:~]+\(", text)
    if signature:  # a C++ function signature before the sentence: skip to its closing parenthesis
        depth, position = 1, signature.end()
        while position < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[position], 0)
            position += 1
        text = text[position:]
    text = re.sub(r"^::<lambda\(\)>\s*", "", text.strip())
    text = text.strip()
    return text.splitlines()[0] if text else type(exc).__name__


_IR_VERSION_RE = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def _load_error(exc: BaseException, path: Path, ir_graph: Graph, opsets: str) -> TargetError:
    """A readable TargetError for an ORT failure to load the model, naming the node and op when it can."""
    message = _short_ort_message(exc)
    nodes = ir_graph.nodes_by_id
    # Session-copy nodes are named by id, so a quoted name in ORT's message is one of our ids.
    for quoted in re.findall(r"'([^']+)'|\"([^\"]+)\"|name\s*[:=]\s*(\S+)", message):
        for candidate in quoted:
            candidate = candidate.strip().rstrip(".,")
            if candidate in nodes:
                node = nodes[candidate]
                domain = f" (domain {node.domain})" if node.domain else ""
                return TargetError(f"ONNX Runtime cannot load {path.name}: node '{node.id}' (op {node.op_type}"
                                   f"{domain}): {message}")
    # Otherwise an op type ORT does not know: name the nodes of that op.
    match = (re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered", message)
             or re.search(r"()(?:No Op registered for|op|operator)\s+'?([A-Za-z_]\w*)'?", message))
    if match:
        op = match.group(2)
        hits = [n for n in ir_graph.nodes if n.op_type == op]
        if hits:
            where = ", ".join(f"'{n.id}'" for n in hits[:3]) + (f" and {len(hits) - 3} more" if len(hits) > 3 else "")
            return TargetError(f"ONNX Runtime cannot load {path.name}: op {op} at node {where}: {message}")
    return TargetError(f"ONNX Runtime cannot load {path.name} (opsets: {opsets}): {message}")


# ============================================================================ kernel mapping

def _topological(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    produced = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    pending = [0] * len(nodes)
    dependents: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for j in {produced[t] for t in node.input if t in produced and produced[t] != i}:
            dependents.setdefault(j, []).append(i)
            pending[i] += 1
    ready = deque(i for i, c in enumerate(pending) if c == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(nodes[i])
        for k in dependents.get(i, ()):
            pending[k] -= 1
            if pending[k] == 0:
                ready.append(k)
    if len(order) < len(nodes):
        placed = {id(n) for n in order}
        order.extend(n for n in nodes if id(n) not in placed)
    return order


@dataclass
class KernelMapping:
    """Kernel groups of an optimized graph and the source nodes each covers.

    groups: group id -> (kernel names, source node ids).  Every source node of
    the graph belongs to exactly one group; a kernel the runtime inserted
    (a layout reorder) may form a group with no source node.
    """

    groups: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    kernel_ops: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def map_kernels_to_source(source: onnx.GraphProto, optimized: onnx.GraphProto) -> KernelMapping:
    """Map each kernel of ORT's optimized graph to the source nodes it computes.

    Tensor names are the anchors: a tensor of the optimized graph that has a
    source name holds that source tensor's values.  Layout kernels (NCHWc
    reorders) pass identity from input to output and back; a kernel whose
    output was renamed is matched through the tensor name ORT built its name
    from ("<tensor>_nchwc"), and failing that merged with its consumer.  A
    kernel then covers the source nodes between its input and output tensors:
    walking back from its outputs through source producers, stopping at its
    inputs, at constants and at nodes an earlier kernel covers.  Source nodes
    no kernel covers (removed by the optimizer: Identity, Dropout, folded
    shape arithmetic) join the group of the nearest covered neighbour.
    """
    producer = {out: n for n in source.node for out in n.output if out}
    source_constants = {t.name for t in source.initializer}
    source_tensors = set(producer) | {i.name for i in source.input}
    optimized_constants = {t.name for t in optimized.initializer}
    kernels = _topological([n for n in optimized.node])
    kernel_ops = {n.name: n.op_type for n in kernels}
    source_nodes = {n.name: n for n in source.node}

    equivalent: dict[str, str] = {}
    for node in kernels:
        for name in list(node.input) + list(node.output):
            if name in source_tensors and name not in optimized_constants:
                equivalent[name] = name
    changed, sweep = True, 0
    while changed:
        # Alternate directions so identity travels along a chain of reorders in a few sweeps.
        changed, sweep = False, sweep + 1
        for node in (kernels if sweep % 2 else reversed(kernels)):
            if node.op_type in _LAYOUT_OPS and node.input and node.output:
                src, dst = node.input[0], node.output[0]
                if src in equivalent and dst not in equivalent:
                    equivalent[dst] = equivalent[src]
                    changed = True
                elif dst in equivalent and src not in equivalent:
                    equivalent[src] = equivalent[dst]
                    changed = True
            elif node.output and node.output[0] and node.output[0] not in equivalent:
                # A node ORT rewrote in place (an NCHWc Concat) keeps its name, which in the
                # session copy is its source id: same op, same outputs in the same order.
                same = source_nodes.get(node.name)
                if same is not None and same.op_type == node.op_type and len(same.output) == len(node.output):
                    for mine, theirs in zip(node.output, same.output):
                        if mine and theirs and mine not in equivalent:
                            equivalent[mine] = theirs
                    changed = True
                    continue
                for suffix in _KERNEL_NAME_SUFFIXES:
                    if node.name.endswith(suffix) and node.name[:-len(suffix)] in source_tensors:
                        equivalent[node.output[0]] = node.name[:-len(suffix)]
                        changed = True
                        break

    # Union kernels whose output has no source identity with their consumers.
    parent = {n.name: n.name for n in kernels}

    def find(name):
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    consumers: dict[str, list[str]] = {}
    for node in kernels:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    graph_outputs = {o.name for o in optimized.output}
    for node in kernels:
        if node.op_type in _LAYOUT_OPS:
            continue
        for name in node.output:
            if name and name not in equivalent and name not in graph_outputs:
                for consumer in consumers.get(name, ()):
                    parent[find(consumer)] = find(node.name)

    members: dict[str, list[onnx.NodeProto]] = {}
    for node in kernels:
        members.setdefault(find(node.name), []).append(node)

    source_consumers = source_consumers_of(source)
    claimed: dict[str, str] = {}
    groups: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    for root in [find(n.name) for n in kernels]:
        if root in groups:
            continue
        group_kernels = members[root]
        kernel_names = tuple(n.name for n in group_kernels)
        covered: list[str] = []
        groups[root] = (kernel_names, covered)
        if all(n.op_type in _LAYOUT_OPS for n in group_kernels):
            continue
        internal = {out for n in group_kernels for out in n.output}
        inputs = {equivalent[t] for n in group_kernels for t in n.input
                  if t in equivalent and t not in internal}
        stops = inputs | source_constants
        stack = [producer[equivalent[t]] for n in group_kernels for t in n.output
                 if t in equivalent and equivalent[t] in producer]
        while stack:
            node = stack.pop()
            if node.name in claimed:
                continue
            claimed[node.name] = root
            covered.append(node.name)
            for name in node.input:
                if name and name not in stops and name in producer:
                    stack.append(producer[name])
        if len(group_kernels) == 1:
            _extend_forward(group_kernels[0], covered, inputs, source_constants, source_consumers,
                            source_nodes, claimed, root, equivalent)
    # Nodes the optimizer removed or folded: the nearest covered neighbour's group.
    unclaimed = [n for n in source.node if n.name not in claimed]
    for _ in range(len(unclaimed) + 1):
        progress = False
        for node in unclaimed:
            if node.name in claimed:
                continue
            neighbours = [producer[t] for t in node.input if t in producer] + \
                         [c for t in node.output for c in source_consumers.get(t, ())]
            owner = next((claimed[n.name] for n in neighbours if n.name in claimed), None)
            if owner is not None:
                claimed[node.name] = owner
                groups[owner][1].append(node.name)
                progress = True
        if not progress:
            break
    warnings = []
    orphans = [n.name for n in source.node if n.name not in claimed]
    if orphans and groups:
        # Isolated nodes (nothing connects them to a kernel): one group for all of them, no time.
        warnings.append(f"{len(orphans)} source node(s) not reached from any kernel: "
                        f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}")
    order = {n.name: i for i, n in enumerate(source.node)}
    result = {root: (names, tuple(sorted(covered, key=order.__getitem__)))
              for root, (names, covered) in groups.items()}
    return KernelMapping(result, kernel_ops, warnings)


def source_consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    return consumers


def _extend_forward(kernel: onnx.NodeProto, covered: list[str], inputs: set[str], constants: set[str],
                    consumers: Mapping[str, list[onnx.NodeProto]], nodes_by_name: Mapping[str, onnx.NodeProto],
                    claimed: dict[str, str], root: str, equivalent: dict[str, str]) -> None:
    """Grow a kernel's covered nodes forward while the kernel evidently computes more.

    A kernel reads all of its inputs and applies its fused activation: when the
    nodes found so far leave an input unread (the NCHWc Conv's fused Sum operand)
    or lack the activation named in the kernel's `activation` attribute, the
    single consumer of the current output joins, provided it reads nothing the
    kernel does not have.  The kernel's output tensor identity moves with it.
    """
    if not kernel.output or kernel.output[0] not in equivalent:
        return
    activation = ""
    for attribute in kernel.attribute:
        if attribute.name == "activation" and attribute.type == onnx.AttributeProto.STRING:
            activation = attribute.s.decode("utf-8", "replace")
    members = [nodes_by_name[name] for name in covered]
    read = {name for node in members for name in node.input if name}
    produced = {out for node in members for out in node.output if out}
    has_activation = not activation or any(node.op_type == activation for node in members)
    tail = equivalent[kernel.output[0]]
    for _ in range(8):  # a kernel fuses a handful of ops at most
        unread = inputs - read - produced
        if not unread and has_activation:
            break
        following = consumers.get(tail, [])
        if len(following) != 1:
            break
        node = following[0]
        if node.name in claimed or not node.output or not node.output[0]:
            break
        available = inputs | constants | produced
        if any(name and name not in available for name in node.input):
            break
        if not unread and node.op_type != activation:
            break
        claimed[node.name] = root
        covered.append(node.name)
        read.update(name for name in node.input if name)
        produced.update(out for out in node.output if out)
        has_activation = has_activation or node.op_type == activation
        tail = node.output[0]
    equivalent[kernel.output[0]] = tail


# ============================================================================ profile events

def parse_profile_events(events: Sequence[Mapping], skip_runs: int, keep_runs: int
                         ) -> tuple[list[dict[str, float]], dict[str, dict]]:
    """Per-run kernel times in ms ({kernel name: ms} per run) and each kernel's event args (first seen).

    Node events are bucketed into runs by the `model_run` session events; the
    first `skip_runs` (warm-up) are dropped and at most `keep_runs` kept.  A
    kernel that runs several times in one run (a loop body) is summed.
    """
    runs = sorted(((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda r: r[0])
    runs = runs[skip_runs:skip_runs + keep_runs]
    per_run: list[dict[str, float]] = [{} for _ in runs]
    args: dict[str, dict] = {}
    if not runs:
        return per_run, args
    starts = [r[0] for r in runs]
    import bisect
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(_KERNEL_EVENT_SUFFIX):
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index < 0 or event["ts"] > runs[index][1]:
            continue
        name = event["name"][:-len(_KERNEL_EVENT_SUFFIX)]
        bucket = per_run[index]
        bucket[name] = bucket.get(name, 0.0) + event["dur"] / 1000.0
        if name not in args:
            args[name] = event.get("args", {})
    return per_run, args


def _int_arg(args: Mapping, key: str) -> Optional[int]:
    try:
        return int(args[key])
    except (KeyError, TypeError, ValueError):
        return None


# ============================================================================ the target

_WORKDIR_PREFIX = "layerscope-cpu-"
_MiB = 1024 * 1024
_stale_checked: set[str] = set()


def _remove_stale_workdirs(parent: Path) -> None:
    """Work directories of processes that were killed (no chance to clean up): removed once per folder."""
    if str(parent) in _stale_checked:
        return
    _stale_checked.add(str(parent))
    for entry in parent.glob(f"{_WORKDIR_PREFIX}*-*"):
        pid_text = entry.name[len(_WORKDIR_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass  # alive but not ours to signal: leave it


def check_memory_budget(analysis, budget_bytes: int) -> None:
    """Refuse a model whose load would create more tensor bytes than `budget_bytes`.

    Counted before anything is allocated, from static shapes: the constants that
    folding computes (all held at once) plus the peak of live activations a run
    needs.  A constant whose size cannot be known before running it cannot be
    bounded, so it is refused too (a 200-byte ConstantOfShape can ask for 19 GB).
    """
    constants = 0
    for node_id in analysis.order:
        metrics = analysis.nodes[node_id]
        if not metrics.is_constant:
            continue
        if metrics.output_bytes is None:
            op = analysis.graph.node(node_id).op_type
            raise TargetError(f"node '{node_id}' ({op}) computes a constant whose size is not known before running "
                              f"it; the memory budget of this agent ({budget_bytes / _MiB:.0f} MiB) cannot be "
                              "checked, so the model is refused")
        constants += metrics.output_bytes
    activations = analysis.totals.peak_activation_bytes
    if constants + activations > budget_bytes:
        raise TargetError(f"loading this model would create {(constants + activations) / _MiB:,.0f} MiB of "
                          f"tensors (constants {constants / _MiB:,.0f} MiB, peak activations "
                          f"{activations / _MiB:,.0f} MiB), more than this agent's memory budget of "
                          f"{budget_bytes / _MiB:,.0f} MiB (--load-memory-mb); check the model's shapes and the "
                          "input size")


def check_external_data_fits(proto: onnx.ModelProto, path: Path, ignore: bool = False) -> Optional[str]:
    """Refuse, before reading them, weights kept outside the model file that the free memory cannot
    hold (engine.free_memory), unless `ignore`; returns a warning when the check was skipped or
    overridden.  A device agent is no way out: it takes single-file models only
    (engine.bridge.backends.refuse_external_data)."""
    from engine.free_memory import IGNORE_OPTION, check_external_data
    check = check_external_data(proto, path, ignore)
    if check.refusal is not None:
        raise TargetError(f"{path.name}: {check.refusal}; profiling reads them all into memory: profile it on a "
                          f"computer with more memory (`layerscope profile` there), or free memory first, or "
                          f"run it anyway ({IGNORE_OPTION})")
    return None if check.note is None else f"{path.name}: {check.note}"


@dataclass
class _SessionCopy:
    """The model file ORT runs, written by write_session_copy, and what was learnt writing it."""
    session_model: Path
    shapes: dict[str, tuple[int, ...]]
    input_names: list[str]
    folded_ids: list[str]
    warnings: list[str]
    opsets: str
    model: Optional[Model] = None  # IR and analysis: kept when written in this process, not sent back
    analysis: Any = None           # from a child (the caller opens them again, cheaply)


def write_session_copy(path: Path, settings: ProfileSettings, workdir: Path, memory_budget_bytes: Optional[int],
                       check_proto: Optional[Callable[[onnx.ModelProto], None]] = None,
                       ir_version: Optional[int] = None, keep_model: bool = False) -> _SessionCopy:
    """Parse the model, fix its input shapes, name nodes by IR id, fold constants, write `workdir/session.onnx`.

    All the protobuf work of a load (the part that holds the GIL), so that the agent can run it in
    a child process.  `check_proto` sees the model before any external data is read.
    """
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # the protobuf message can quote much of the file: kept short
        raise ModelLoadError(str(path), f"could not be read as onnx: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}") from None
    if check_proto is not None:
        check_proto(proto)
    memory_note = check_external_data_fits(proto, path, settings.ignore_memory_check)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise ModelLoadError(str(path), f"could not read its external data: {type(exc).__name__}: {exc}") from None
    initializer_names = {t.name for t in proto.graph.initializer}
    graph_inputs = [(i.name, _proto_dims(i)) for i in proto.graph.input if i.name not in initializer_names]
    input_names = [name for name, _ in graph_inputs]
    npz = None
    if settings.inputs not in ("random", "zeros"):
        npz = _load_npz(settings.inputs, input_names, memory_budget_bytes)
    shapes = resolve_input_shapes(graph_inputs, settings, {k: v.shape for k, v in npz.items()} if npz else {})
    del npz

    from engine.analysis import analyze
    from importers import open_model
    model = open_model(path, input_shapes=shapes)
    analysis = analyze(model)
    if memory_budget_bytes is not None:
        check_memory_budget(analysis, memory_budget_bytes)
    ir_graph = model.main_graph
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)

    # The session copy: nodes named by id, shapes fixed, weights no longer listed as inputs.
    if len(proto.graph.node) != len(ir_graph.nodes):
        raise TargetError(f"{path.name}: the importer saw {len(ir_graph.nodes)} nodes and ONNX "
                          f"{len(proto.graph.node)}; cannot map timings to nodes")
    for node, ir_node in zip(proto.graph.node, ir_graph.nodes):
        node.name = ir_node.id
    kept_inputs = [i for i in proto.graph.input if i.name not in initializer_names]
    del proto.graph.input[:]
    proto.graph.input.extend(kept_inputs)
    for graph_input in proto.graph.input:
        dims = graph_input.type.tensor_type.shape
        dims.Clear()
        for size in shapes[graph_input.name]:
            dims.dim.add().dim_value = int(size)
    del proto.graph.value_info[:]  # stale once shapes change; ORT infers its own
    proto.ir_version = max(proto.ir_version, 4) if ir_version is None else ir_version
    constant_ids = {i for i, m in analysis.nodes.items() if m.is_constant}
    folded_ids, warnings = _fold_constant_nodes(proto, ir_graph, constant_ids)
    if memory_note is not None:
        warnings.insert(0, memory_note)

    session_model = workdir / "session.onnx"
    size = _serialized_size(proto)  # once: ByteSize holds the GIL for about a second per 100 MB
    big = size is None or size > _EXTERNAL_DATA_THRESHOLD
    onnx.save_model(proto, str(session_model), save_as_external_data=big, all_tensors_to_one_file=True,
                    location="session.weights", size_threshold=1024)
    return _SessionCopy(session_model, shapes, input_names, folded_ids, warnings, opsets,
                        model if keep_model else None, analysis if keep_model else None)


@dataclass
class _Prepared:
    key: tuple
    settings: ProfileSettings
    model_path: Path
    model: Model
    analysis: Any
    session_model: Path
    input_shapes: dict[str, tuple[int, ...]]
    feed: dict[str, np.ndarray]
    folded_ids: list[str]
    warnings: list[str]
    plain: Any  # ort.InferenceSession without profiler
    opsets: str


def read_profile_events(path) -> list:
    """ORT's profile file, one event at a time.

    ORT writes a JSON array with one event object per line.  Decoding it line
    by line keeps each C call short, so a GUI thread waiting on the GIL is
    never blocked for the whole file (a single json.load of a 30-run DenseNet
    profile held it for over 200 ms).  Any other layout falls back to json.load.
    """
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip().rstrip(",")
            if text in ("", "[", "]"):
                continue
            try:
                events.append(json.loads(text))
            except json.JSONDecodeError:
                handle.seek(0)
                return json.load(handle)
    return events


class CpuTarget(PreparedModelTarget):
    """ONNX Runtime on this computer's CPU.  Not thread-safe: one profile at a time per instance."""

    # Execution providers, in order; a subclass (the bridge agent's ORT backend) puts an
    # accelerator first and keeps the CPU as the fallback.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    name = "cpu"

    def __init__(self):
        if ort is None:  # pragma: no cover
            raise TargetError(f"the CPU reference needs onnxruntime, which is not installed ({_ORT_IMPORT_ERROR})")
        self._prepared: Optional[_Prepared] = None
        self._workdir: Optional[Path] = None
        self._finalizer = None
        # Where session copies are written (the agent keeps them in its private cache folder), and the
        # tensor bytes a load may create (None: no bound, as for the desktop's own CPU reference).
        self.work_parent: Path = Path(tempfile.gettempdir())
        self.memory_budget_bytes: Optional[int] = None
        # The agent makes the session copy in a child process (its event loop must keep answering
        # while large protobufs are parsed and written), and checks the parsed model first
        # (check_proto(model_proto), a module-level function: it is sent to the child by name).
        self.session_copy_in_child = False
        self.check_proto: Optional[Callable[[onnx.ModelProto], None]] = None

    # -- lifecycle ------------------------------------------------------------------------

    def describe(self) -> dict:
        return describe_cpu(self._prepared.settings.threads if self._prepared else 0)

    def close(self) -> None:
        self._prepared = None
        if self._workdir is not None:
            self._finalizer()
            self._workdir = None

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._require_prepared().input_shapes)

    @property
    def session_model_path(self) -> Path:
        """The session copy ORT runs (nodes named by IR id, shapes fixed, constants folded).

        Lives in the target's work folder: valid until the target is closed."""
        return self._require_prepared().session_model

    @property
    def folded_node_ids(self) -> list[str]:
        """Nodes static analysis found constant, replaced by initializers in the session copy."""
        return list(self._require_prepared().folded_ids)

    @property
    def load_warnings(self) -> list[str]:
        return list(self._require_prepared().warnings)

    # -- prepare --------------------------------------------------------------------------

    def prepare(self, model_path, settings: Optional[ProfileSettings] = None) -> None:
        """Load the model for `settings` (mode, threads, inputs, shapes).  Raises TargetError/ModelLoadError."""
        settings = settings or ProfileSettings()
        path = Path(model_path)
        if not path.exists():
            raise ModelLoadError(str(path), "no such file or directory")
        _check_onnx_file(path)
        # The new session is built beside the old one, which is closed only once the new one works:
        # a load that fails (bad settings, a model the runtime refuses) leaves the target usable.
        try:
            _remove_stale_workdirs(self.work_parent)
            workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-", dir=self.work_parent))
        except OSError as exc:
            raise TargetError(f"cannot write the session copy of {path.name} into {self.work_parent}: "
                              f"{exc.strerror or exc}") from None
        try:
            copy = self._session_copy(path, settings, workdir)
            model, analysis = copy.model, copy.analysis
            if model is None:  # made in a child process: the IR is opened here (weights stay on disk)
                from engine.analysis import analyze
                from importers import open_model
                model = open_model(path, input_shapes=copy.shapes)
                analysis = analyze(model)
            plain = self._open_session_copy(copy, path, settings, workdir, model.main_graph)
            npz = None
            if settings.inputs not in ("random", "zeros"):
                npz = _load_npz(settings.inputs, copy.input_names, self.memory_budget_bytes)
            feed = _make_inputs(plain.get_inputs(), copy.shapes, settings.inputs if npz is None else "npz",
                                settings.seed, npz)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self.close()
        self._workdir = workdir
        # Removed when the target is closed or collected, and at interpreter exit.
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(workdir), True)
        self._prepared = _Prepared(settings.session_key(), settings, path, model, analysis, copy.session_model,
                                   copy.shapes, feed, copy.folded_ids, copy.warnings, plain, copy.opsets)

    def _session_copy(self, path: Path, settings: ProfileSettings, workdir: Path,
                      ir_version: Optional[int] = None) -> "_SessionCopy":
        arguments = (path, settings, workdir, self.memory_budget_bytes, self.check_proto, ir_version)
        if self.session_copy_in_child:
            from engine.targets.isolated import call_in_child
            return call_in_child(write_session_copy, *arguments)
        return write_session_copy(*arguments, keep_model=True)

    def _open_session_copy(self, copy: "_SessionCopy", path: Path, settings: ProfileSettings, workdir: Path,
                           ir_graph: Graph):
        """The plain session on the copy (written again for an older IR version if ORT asks for one)."""
        try:
            return self._session(copy.session_model, settings, ir_graph, path, copy.opsets)
        except TargetError as exc:
            # onnx writes newer IR versions than this ORT reads; the graph itself is usually fine.
            match = _IR_VERSION_RE.search(str(exc))
            if not match:
                raise
        older = self._session_copy(path, settings, workdir, ir_version=int(match.group(2)))
        copy.warnings.append(f"the model is stamped IR version {match.group(1)}; ONNX Runtime {ort.__version__} "
                             f"reads up to {match.group(2)}, so it runs as IR version {match.group(2)}")
        return self._session(older.session_model, settings, ir_graph, path, copy.opsets)

    def _session(self, model_file: Path, settings: ProfileSettings, ir_graph: Graph, source_path: Path,
                 opsets: str, profile_prefix: Optional[Path] = None, optimized_file: Optional[Path] = None):
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        # Worker threads block instead of spinning between kernels.  Two sessions (plain and
        # profiled) live side by side; spinning pools steal each other's cores and made run
        # times here vary by 30-50 % (CV), against about 5 % without spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                                            if settings.mode == MODE_EXACT
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_prefix)
        if optimized_file is not None:
            options.optimized_model_filepath = str(optimized_file)
            # Only the graph structure is wanted: weights go to a side file.
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             optimized_file.name + ".weights")
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "64")
        try:
            return ort.InferenceSession(str(model_file), options, providers=list(self.providers))
        except Exception as exc:
            raise _load_error(exc, source_path, ir_graph, opsets) from None

    # -- run ------------------------------------------------------------------------------

    def run(self, inputs: Optional[Mapping[str, Any]] = None) -> dict[str, np.ndarray]:
        """One plain run; `inputs` default to the generated ones."""
        prepared, feed = self._plain_feed(inputs)
        names = [o.name for o in prepared.plain.get_outputs()]
        try:
            return dict(zip(names, prepared.plain.run(names, feed)))
        except Exception as exc:
            raise TargetError(f"the run failed: {_short_ort_message(exc)}") from None

    # -- profile --------------------------------------------------------------------------

    def profile(self, settings: Optional[ProfileSettings] = None, progress: Optional[ProgressCallback] = None,
                cancel: Optional[threading.Event] = None, model_path=None) -> Profile:
        """Warm up, then alternate plain and profiled runs; per-node times from ORT's profiler.

        Cancel (checked between runs), an exception in a run, or KeyboardInterrupt
        stop the loop; the runs measured so far are kept (complete=False).
        """
        settings = settings or (self._prepared.settings if self._prepared else ProfileSettings())
        prepared = self._ensure(settings, model_path)
        assert self._workdir is not None
        stamp = f"{int(time.time() * 1000)}"
        optimized_file = self._workdir / f"optimized-{stamp}.onnx" if settings.mode == MODE_DEPLOYED else None
        profiled = self._session(prepared.session_model, settings, prepared.model.main_graph,
                                 prepared.model_path, prepared.opsets,
                                 profile_prefix=self._workdir / f"ort-profile-{stamp}",
                                 optimized_file=optimized_file)
        plain = prepared.plain
        feed = prepared.feed
        output_names = [o.name for o in plain.get_outputs()]
        total = settings.warmup + settings.runs
        plain_ms: list[float] = []
        plain_cpu_ms: list[float] = []  # CPU time of this thread during the plain runs
        profiled_ms: list[float] = []
        error, interrupted, warmed = "", False, 0
        clock = time.perf_counter
        try:
            for index in range(total):
                if cancel is not None and cancel.is_set():
                    break
                is_warmup = index < settings.warmup
                try:
                    cpu_start = time.thread_time()
                    start = clock()
                    plain.run(output_names, feed)
                    middle = clock()
                    cpu_used = time.thread_time() - cpu_start
                    profiled.run(output_names, feed)
                    end = clock()
                except Exception as exc:
                    what = f"warm-up run {index + 1}" if is_warmup else f"run {index - settings.warmup + 1}"
                    error = f"{what} failed: {_short_ort_message(exc)}"
                    if settings.inputs == "random":
                        error += " (the inputs were random: give real values in a .npz file if the model needs them)"
                    break
                if is_warmup:
                    warmed += 1
                    message = f"warm-up {index + 1}/{settings.warmup}"
                else:
                    plain_ms.append((middle - start) * 1000.0)
                    plain_cpu_ms.append(cpu_used * 1000.0)
                    profiled_ms.append((end - middle) * 1000.0)
                    message = f"run {len(plain_ms)}/{settings.runs}: {plain_ms[-1]:.2f} ms"
                if progress is not None:
                    try:
                        progress(index + 1, total, message)
                    except Exception as exc:  # the caller's failure stops profiling like a failed run
                        error = f"stopped after {message}: {type(exc).__name__}: {exc}"
                        break
        except KeyboardInterrupt:
            interrupted = True
        profile_file = profiled.end_profiling()
        try:
            events = read_profile_events(profile_file)
        finally:
            try:
                os.remove(profile_file)
            except OSError:
                pass
        completed = len(plain_ms)
        # The profiled run of a failed iteration may have finished: only complete pairs count.
        per_run, kernel_args = parse_profile_events(events, warmed, completed)
        per_run = per_run[:completed]
        if len(per_run) < completed:  # should not happen; keep samples aligned with runs
            completed = len(per_run)
            plain_ms, profiled_ms = plain_ms[:completed], profiled_ms[:completed]
        if interrupted and not error:
            error = "interrupted"
        elif cancel is not None and cancel.is_set() and completed < settings.runs and not error:
            error = "cancelled"
        complete = completed == settings.runs and not error
        del profiled

        groups, nodes, warnings = self._timings(prepared, settings, per_run, kernel_args, optimized_file)
        analysis = prepared.analysis
        effective_threads = settings.threads or os.cpu_count()
        profile_settings = {"runs": settings.runs, "warmup": settings.warmup, "threads": settings.threads,
                            "effective_threads": effective_threads,
                            "input_mode": "npz" if settings.inputs not in ("random", "zeros") else settings.inputs,
                            "inputs_file": settings.inputs if settings.inputs not in ("random", "zeros") else None,
                            "seed": settings.seed,
                            "input_shapes": {k: list(v) for k, v in prepared.input_shapes.items()},
                            "size": list(settings.size) if settings.size else None}
        target = describe_cpu(settings.threads)
        wait_share = _cpu_wait_share(plain_ms, plain_cpu_ms) if settings.threads == 1 else None
        if wait_share is not None and wait_share > BUSY_WAIT_SHARE:
            warnings.append(f"this computer was busy: the runs spent {wait_share * 100:.0f} % of their time waiting "
                            "for a CPU (wall against CPU time), which inflates end-to-end times and lowers "
                            "coverage; per-layer medians suffer less. Profile again when it is idle")
        return Profile.build(
            model_path=str(prepared.model_path), model_format=prepared.model.format, target=target,
            mode=settings.mode, settings=profile_settings, end_to_end_samples=plain_ms,
            profiled_samples=profiled_ms, groups=groups, nodes=nodes, runs_completed=completed,
            complete=complete, error=error, stage_order=[s.name for s in analysis.stages],
            untimed_node_ids=prepared.folded_ids, warnings=prepared.warnings + warnings,
            cpu_wait_share=wait_share)

    def _timings(self, prepared: _Prepared, settings: ProfileSettings, per_run: list[dict[str, float]],
                 kernel_args: Mapping[str, Mapping], optimized_file: Optional[Path]
                 ) -> tuple[list[TimingGroup], list[NodeTiming], list[str]]:
        if not per_run:
            return [], [], []
        analysis = prepared.analysis
        ir_graph = prepared.model.main_graph
        warnings: list[str] = []
        folded = set(prepared.folded_ids)
        source_ids = [node_id for node_id in analysis.order if node_id not in folded]
        seen_kernels = set().union(*per_run)

        def samples(kernels: Sequence[str]) -> list[float]:
            return [sum(run.get(k, 0.0) for k in kernels) for run in per_run]

        if settings.mode == MODE_EXACT:
            mapping = {node_id: ((node_id,), (node_id,)) for node_id in source_ids}
            kernel_ops = {node_id: ir_graph.node(node_id).op_type for node_id in source_ids}
        else:
            assert optimized_file is not None
            source_proto = onnx.load(str(prepared.session_model), load_external_data=False)
            try:
                optimized = onnx.load(str(optimized_file), load_external_data=False)
            except Exception as exc:
                raise TargetError(f"could not read ONNX Runtime's optimized graph ({exc}); "
                                  "deployed-mode timings cannot be mapped to nodes") from None
            result = map_kernels_to_source(source_proto.graph, optimized.graph)
            mapping, kernel_ops = result.groups, result.kernel_ops
            warnings += result.warnings
        known_kernels = {k for kernels, _ in mapping.values() for k in kernels}
        unknown = sorted(seen_kernels - known_kernels)
        if unknown:
            warnings.append(f"{len(unknown)} profiled kernel(s) not in the graph (counted in coverage, "
                            f"not shown on nodes): {', '.join(unknown[:5])}")

        groups: list[TimingGroup] = []
        timed: dict[str, NodeTiming] = {}
        for group_id, (kernels, node_ids) in mapping.items():
            ran = [k for k in kernels if k in seen_kernels]
            if not ran:
                continue  # folded away by the runtime: its nodes are attached elsewhere or untimed
            stats = TimingStats.from_samples(samples(ran), MEASURED)
            kernel_op = "+".join(kernel_ops.get(k, "?") for k in ran)
            groups.append(TimingGroup(group_id, " + ".join(ran), tuple(node_ids), stats, kernel_op))
            if not node_ids:
                continue
            args = kernel_args.get(ran[0], {}) if len(ran) == 1 else {}
            if len(node_ids) == 1:
                node_id = node_ids[0]
                metrics = analysis.nodes[node_id]
                output_bytes = _int_arg(args, "output_size")
                memory = None
                if args:
                    parts = [_int_arg(args, k) for k in ("activation_size", "parameter_size", "output_size")]
                    memory = sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None
                timed[node_id] = NodeTiming(node_id, metrics.op_type, metrics.stage, stats, group_id, MEASURED,
                                            output_bytes if output_bytes is not None else metrics.output_bytes,
                                            memory, compute_unit="CPU", compute_unit_kind=MEASURED)
                continue
            weights = [float(analysis.nodes[n].flops or 0) for n in node_ids]
            total = sum(weights)
            if total <= 0:
                weights, total = [1.0] * len(node_ids), float(len(node_ids))
            for node_id, weight in zip(node_ids, weights):
                metrics = analysis.nodes[node_id]
                timed[node_id] = NodeTiming(node_id, metrics.op_type, metrics.stage,
                                            stats.scaled(weight / total, ATTRIBUTED), group_id, ATTRIBUTED,
                                            metrics.output_bytes, None, compute_unit="CPU",
                                            compute_unit_kind=MEASURED)
        nodes = [timed[node_id] for node_id in analysis.order if node_id in timed]
        missing = [node_id for node_id in source_ids if node_id not in timed]
        if missing:
            warnings.append(f"{len(missing)} node(s) have no time (not run by ONNX Runtime): "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return groups, nodes, warnings


# Above this share of wall time spent waiting for a CPU, a profile says the computer was busy.
BUSY_WAIT_SHARE = 0.10


def _cpu_wait_share(wall_ms: Sequence[float], cpu_ms: Sequence[float]) -> Optional[float]:
    """Share of the plain runs' wall time the (single) running thread spent off the CPU.

    With one intra-op thread ONNX Runtime computes on the calling thread, so
    wall - CPU time is time spent preempted (or blocked): near 0 on an idle
    machine.  None when there are no runs.
    """
    if not wall_ms or not cpu_ms:
        return None
    wall, cpu = sorted(wall_ms)[len(wall_ms) // 2], sorted(cpu_ms)[len(cpu_ms) // 2]
    if wall <= 0:
        return None
    return max(0.0, min(1.0, 1.0 - cpu / wall))


def _proto_dims(value_info: onnx.ValueInfoProto) -> Optional[list]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]


def _serialized_size(proto: onnx.ModelProto) -> Optional[int]:
    """proto.ByteSize(), or None where it fails (beyond 2 GB on some protobuf builds)."""
    try:
        return proto.ByteSize()
    except Exception:
        return None
