"""ONNX importer: `.onnx` files (any opset, embedded or external weights, subgraphs).

Opening does not load weights.  The file is memory-mapped and walked with the
protobuf wire format; large tensor payloads inside initializers are skipped
(their offsets recorded) and only the rest — a few hundred kilobytes even for
a large model — is parsed by the onnx package and shape-inferred.  A file of
up to 64 MB is parsed whole first, and used as it is when it holds no large
payload (weights external or all small: big exported graphs).  Small
constants (shape vectors, axes, scalars) keep their values, because shape
inference and analysis need them.
"""
from __future__ import annotations

import marshal
import mmap
import os
import re
import shutil
import struct
from contextlib import nullcontext
from dataclasses import fields as dataclass_fields
from itertools import chain
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

from engine.gil_slices import clear, parts, slice_bounds
from engine.ir import (Graph, Initializer, Model, ModelLoadError, Node, TensorType, Value,
                       WeightLocation)
from importers import content_kind, not_a_model, protowire
# Not `import onnx`: that takes a second longer (ml_dtypes); see importers/onnx_proto.py.
from importers.onnx_proto import (AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto,
                                  has_schema, infer_shapes_bytes)

FORMAT = "onnx"
EXTENSIONS = (".onnx",)

# Tensor payloads up to this size are kept in the parsed model (shape data, scalars).
SMALL_TENSOR_BYTES = 4096

# ModelProto field numbers (onnx.proto): the ones a sniff may see.
_MODEL_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
# TensorProto fields holding data, and the name field.
_TENSOR_NAME, _TENSOR_RAW_DATA = 8, 9
_TENSOR_DATA_FIELDS = {4, 5, 6, 7, 9, 10, 11}

_DTYPE_NAMES = {
    TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16", TensorProto.INT8: "int8", TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16", TensorProto.UINT16: "uint16", TensorProto.INT32: "int32",
    TensorProto.UINT32: "uint32", TensorProto.INT64: "int64", TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool", TensorProto.STRING: "string", TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
}
for _name, _dtype in (("FLOAT8E4M3FN", "float8e4m3fn"), ("FLOAT8E4M3FNUZ", "float8e4m3fnuz"),
                      ("FLOAT8E5M2", "float8e5m2"), ("FLOAT8E5M2FNUZ", "float8e5m2fnuz"),
                      ("INT4", "int4"), ("UINT4", "uint4")):
    if hasattr(TensorProto, _name):
        _DTYPE_NAMES[getattr(TensorProto, _name)] = _dtype


def dtype_name(elem_type: int) -> str:
    return _DTYPE_NAMES.get(elem_type, "undefined" if elem_type == 0 else f"onnx-type-{elem_type}")


# ----------------------------------------------------------------------------- sniffing

def sniff(path: Path) -> bool:
    """True when the file's top-level protobuf fields are those of an ONNX ModelProto with a graph."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            numbers = protowire.top_level_field_numbers(buf)
    except (OSError, ValueError):
        return False
    return _MODEL_GRAPH in numbers and set(numbers) <= _MODEL_FIELDS


# ----------------------------------------------------------------------------- loading

def load(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Model:
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(str(path), "is a directory, not an ONNX file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(str(path), "the file is empty")
    parse_whole = size <= PARSE_WHOLE_BYTES
    with open(path, "rb") as handle:
        # A file parsed whole is read(), not copied from a mapping: read() copies in the kernel with
        # the GIL released; bytes() of a fresh 22 MB mapping held it 20-40 ms (its page faults).
        with (nullcontext(handle.read()) if parse_whole
              else mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)) as buf:
            proto, stripped, embedded = _parse_whole(buf) if parse_whole else (None, b"", {})
            if proto is None:
                try:
                    stripped, embedded = _strip_large_tensors(buf)
                except protowire.WireError as exc:
                    raise ModelLoadError(str(path), _unreadable(buf, exc)) from None
    if proto is None:
        try:
            proto = _parse(stripped)
        except Exception as exc:  # DecodeError: well-formed wire data of another message type
            raise ModelLoadError(str(path), _unreadable(stripped, exc)) from None
    if not proto.HasField("graph"):
        raise ModelLoadError(str(path), "not an ONNX model: the content holds no graph "
                                        "(it parses as protobuf, but is some other message)")
    return ModelBuilder(proto, path, embedded, input_shapes or {}, stripped).build()


def _unreadable(buf, exc: Exception) -> str:
    """The problem with a file that does not parse, in a person's terms first; the parser's words
    (\"unexpected wire type 4 at byte 2\") follow as the cause.

    A file whose first fields are those of an ONNX model and that ends inside one was cut short (a
    copy or download that stopped); one that goes wrong further in is damaged; anything else (text,
    an image, another format renamed .onnx) is not an ONNX model at all.
    """
    kind = content_kind(bytes(buf[:512]))
    if kind is not None:
        return not_a_model("an ONNX", kind, exc)
    numbers = []
    try:
        for field in protowire.iter_fields(buf):
            numbers.append(field.number)
            if len(numbers) == 64:
                break
    except protowire.WireError:
        pass
    if not numbers or not set(numbers) <= _MODEL_FIELDS:
        return not_a_model("an ONNX", None, exc)
    if isinstance(exc, protowire.TruncatedError):
        return ("truncated ONNX model: the file ends in the middle of the model; it was probably cut short "
                f"while being copied or downloaded ({exc})")
    return f"damaged ONNX model: it starts as one, but part of its content does not parse ({exc})"


# A file up to this size is parsed whole first: when none of its initializers is large (weights
# in an external file or all small, as in big exported graphs) there is nothing to strip, and the
# Python walk for payload offsets (0.05-0.1 s at 100,000 nodes, before inference can start) is
# skipped.  Otherwise that parse is wasted (at most ~30 ms at this size) and the file is stripped.
PARSE_WHOLE_BYTES = 64 << 20


def _parse_whole(buf) -> tuple[Optional[ModelProto], bytes, dict]:
    """(the model, its bytes, {}) when it has no initializer `_strip_large_tensors` would strip;
    (None, b"", {}) when it has one or does not parse (the strip path then names the problem)."""
    data = bytes(buf)  # no copy when buf is bytes already
    try:
        proto = _parse(data)
    except Exception:
        return None, b"", {}
    # A tensor whose whole serialization fits in SMALL_TENSOR_BYTES has no payload field above it.
    if not proto.HasField("graph") or any(t.ByteSize() > SMALL_TENSOR_BYTES for t in proto.graph.initializer):
        return None, b"", {}
    return proto, data, {}


def _parse(data: bytes) -> ModelProto:
    """`ModelProto.FromString(data)` a megabyte of the graph at a time (protowire.parse_in_pieces):
    a worker opening a big model then never holds the GIL for long in the parser."""
    return protowire.parse_in_pieces(ModelProto, data, _MODEL_GRAPH)


def _strip_large_tensors(buf) -> tuple[bytes, dict[str, WeightLocation]]:
    """Copy of the ModelProto bytes without large initializer payloads, plus where those are."""
    embedded: dict[str, WeightLocation] = {}
    model_parts, stripped_any = [], False
    for field in protowire.iter_fields(buf):
        if field.number == _MODEL_GRAPH and field.wire_type == protowire.LENGTH_DELIMITED:
            # The graph's other fields (nodes, value_info, inputs) are copied as they are, in
            # runs between stripped initializers: one slice per run, not per field.
            graph_parts, copied_to = [], field.start
            for tag_start, payload, end in protowire.find_fields(buf, _GRAPH_INITIALIZER, field.start, field.end):
                if end - payload <= SMALL_TENSOR_BYTES:
                    continue  # no payload inside can be large: stays in the run (most QDQ scales)
                tensor = _strip_tensor(buf, protowire.Field(_GRAPH_INITIALIZER, protowire.LENGTH_DELIMITED,
                                                            tag_start, payload, end, end - payload), embedded)
                if tensor is None:
                    continue
                graph_parts.append(buf[copied_to:tag_start])
                graph_parts.append(protowire.length_delimited(_GRAPH_INITIALIZER, tensor))
                copied_to = end
            if graph_parts:
                stripped_any = True
                graph_parts.append(buf[copied_to:field.end])
                model_parts.append(protowire.length_delimited(_MODEL_GRAPH, b"".join(graph_parts)))
                continue
        model_parts.append(buf[field.tag_start:field.end])
    if not stripped_any:
        return bytes(buf), embedded  # nothing large inside (weights external or small): one copy
    return b"".join(model_parts), embedded


def _strip_tensor(buf, tensor_field: protowire.Field, embedded: dict[str, WeightLocation]) -> Optional[bytes]:
    """The tensor's bytes without its large payload (None when it has none)."""
    kept, name, big = [], "", None
    for field in protowire.iter_fields(buf, tensor_field.start, tensor_field.end):
        if field.number == _TENSOR_NAME and field.wire_type == protowire.LENGTH_DELIMITED:
            name = bytes(buf[field.start:field.end]).decode("utf-8", "replace")
        if field.number in _TENSOR_DATA_FIELDS and field.end - field.start > SMALL_TENSOR_BYTES:
            big = field  # the payload stays in the file; only its place is remembered
            continue
        kept.append(bytes(buf[field.tag_start:field.end]))
    if big is None:
        return None
    embedded[name] = WeightLocation("embedded", "", big.start, big.end - big.start)
    return b"".join(kept)


class ModelBuilder:
    """Turns a (stripped) ModelProto into the IR, with shapes from ONNX shape inference."""

    def __init__(self, proto: ModelProto, path: Path, embedded: dict[str, WeightLocation],
                 input_shapes: Mapping[str, Sequence[int]], proto_bytes: Optional[bytes] = None):
        self.proto = proto
        self.proto_bytes = proto_bytes  # `proto` serialized (what it was parsed from), while unchanged
        self.path = path
        self.embedded = embedded
        self.input_shapes = dict(input_shapes)
        self.warnings: list[str] = []
        self._external_files: dict[str, tuple[Path, bool]] = {}  # location -> (resolved path, exists)
        self.opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}

    def build(self) -> Model:
        if self._apply_input_shapes():
            self.proto_bytes = None  # inference must see the new shapes
        # Shape inference (C++) and the walk of the nodes (Python) need nothing from each other:
        # with a helper process the nodes are read while it infers (see set_inference_executor).
        inference = self._start_shape_inference()
        walked = self._walk_nodes(self.proto.graph)
        weights = self._weights(self.proto.graph)  # nothing from inference either
        inferred = self._finish_shape_inference(inference)
        graph = self._graph(self.proto.graph, top_level=True, walked=walked, inferred=inferred, weights=weights)
        for name in self.input_shapes:
            if name not in graph.inputs:
                raise ModelLoadError(str(self.path), f"--shape names input '{name}', but the model's "
                                                     f"inputs are: {', '.join(graph.inputs)}")
        proto = self.proto
        metadata = {"ir_version": str(proto.ir_version),
                    "opsets": ", ".join(f"{d} {v}" for d, v in sorted(self.opsets.items())),
                    "producer_version": proto.producer_version, "domain": proto.domain,
                    "model_version": str(proto.model_version), "doc_string": proto.doc_string,
                    "graph_name": proto.graph.name}
        metadata.update({entry.key: entry.value for entry in proto.metadata_props})
        metadata = {k: v for k, v in metadata.items() if v not in ("", "0") or k == "ir_version"}
        producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p) or "unknown"
        return Model(FORMAT, producer, (graph,), metadata, str(self.path), tuple(self.warnings))

    # -- shapes ---------------------------------------------------------------------------

    def _apply_input_shapes(self) -> bool:
        """Applies --shape and a free batch dimension to the model's inputs; True when that changed it."""
        graph = self.proto.graph
        initializer_names = {t.name for t in graph.initializer}
        changed = False
        for graph_input in graph.input:
            if graph_input.name in initializer_names:
                continue  # IR<4 lists weights as inputs too
            dims = graph_input.type.tensor_type.shape.dim
            given = self.input_shapes.get(graph_input.name)
            if given is not None:
                graph_input.type.tensor_type.shape.Clear()
                for size in given:
                    graph_input.type.tensor_type.shape.dim.add().dim_value = int(size)
                changed = True
                continue
            if not graph_input.type.tensor_type.HasField("shape"):
                self.warnings.append(
                    f"input '{graph_input.name}' has no shape: costs that depend on it are unknown; "
                    f"give one with --shape {graph_input.name}=1x3x224x224")
                continue
            free = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
            if free == [0] and len(dims) > 1:
                # A free batch dimension is the norm in exported models; per-sample costs are wanted.
                label = dims[0].dim_param or "?"
                dims[0].Clear()
                dims[0].dim_value = 1
                changed = True
                self.warnings.append(f"input '{graph_input.name}': batch dimension '{label}' taken as 1")
            elif free:
                shape = "x".join(d.dim_param or "?" if i in free else str(d.dim_value) for i, d in enumerate(dims))
                self.warnings.append(
                    f"input '{graph_input.name}' has free dimensions ({shape}): costs that depend on them "
                    f"are unknown; fix them with --shape {graph_input.name}=...")
        if changed:
            # Shapes stored in the file were inferred for the old input shapes: drop them so
            # inference recomputes every intermediate and output shape from the new ones.
            del graph.value_info[:]
            for graph_output in graph.output:
                if graph_output.type.tensor_type.HasField("shape"):
                    graph_output.type.tensor_type.ClearField("shape")
        return changed

    def _start_shape_inference(self):
        """Inference of the model's shapes: handed to the helper process for a big graph (a
        `_HandedOver`), else done here (an `_Inferred`, or the exception it raised)."""
        try:
            model_bytes = self.proto_bytes if self.proto_bytes is not None else self.proto.SerializeToString()
            executor = _inference_executor
            if executor is not None and len(self.proto.graph.node) >= INFERENCE_OFFLOAD_NODES:
                return _HandedOver(executor, model_bytes)
            graph = ModelProto.FromString(infer_shapes_bytes(model_bytes)).graph
            return _Inferred(value_type_table(graph), graph.node)
        except Exception as exc:
            return exc

    def _finish_shape_inference(self, inference) -> "_Inferred":
        """What inference found; the stored value types when it failed (the graph must still open)."""
        try:
            if isinstance(inference, Exception):
                raise inference
            return inference.result() if isinstance(inference, _HandedOver) else inference
        except Exception as exc:  # inference errors must not stop the graph from opening
            self.warnings.append(f"shape inference failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                                 "shapes shown are those stored in the file")
            return _Inferred(value_type_table(self.proto.graph), self.proto.graph.node)

    # -- graphs ---------------------------------------------------------------------------

    def _walk_nodes(self, graph: GraphProto) -> "_WalkedNodes":
        """The IR nodes of `graph`, read from the protobuf in one pass, while shape inference runs
        in the helper process: nothing here needs inferred shapes.  Nodes holding subgraphs wait
        for the inferred model (their bodies' shapes); Constants are remembered for their values.

        Read column by column: each field of every node by one C-level `map` (a protobuf field
        read costs 0.2-0.7 us, and Python statements around it per node as much again); known
        ops are asked once per distinct op and attribute values read once per distinct
        serialized attribute (`_node_attributes`); nodes are built by `_node`."""
        # A slice of nodes at a time (engine.gil_slices): each `map` below is one C call that holds
        # the GIL, and over a whole 100,000-node column one took 30-100 ms, a freeze of the app's
        # window while its worker opens the model.
        node_field, count = graph.node, len(graph.node)
        op_types, names, domains, inputs, outputs = [], [], [], [], []
        attribute_fields, constants = [], []
        for start, stop in slice_bounds(count):
            protos = node_field[start:stop]  # a slice copies the repeated field in one C call
            chunk_ops = list(map(_OP_TYPE_OF, protos))
            op_types += chunk_ops
            names += map(_NAME_OF, protos)
            domains += map(_DOMAIN_OF, protos)
            inputs += map(tuple, map(_ALL, map(_INPUT_OF, protos)))
            outputs += map(tuple, map(_ALL, map(_OUTPUT_OF, protos)))
            attribute_fields += [(index, field) for index, field in enumerate(map(_ATTRIBUTE_OF, protos), start)
                                 if field]
            if "Constant" in chunk_ops:
                constants += [(outputs[start + i][0], protos[i]) for i, op_type in enumerate(chunk_ops)
                              if op_type == "Constant"]
        # The last slice's wrapper objects freed before building (the earlier ones went slice by slice:
        # with the attribute fields ~40 MB at 100,000 nodes).
        protos = chunk_ops = None

        attributes, with_body_indices = _node_attributes(len(op_types), attribute_fields)
        clear(attribute_fields)
        node_ids = _unique_ids([name or f"{op_type}_{index}" for index, (name, op_type)
                                in enumerate(zip(names, op_types))] if "" in names else names)
        namespaces = _namespaces(names)
        unknown_ops: dict[tuple[str, str], list[str]] = {}
        pairs: set[tuple[str, str]] = set()
        for start, stop in slice_bounds(count):
            pairs.update(zip(op_types[start:stop], domains[start:stop]))
        known = {pair: _is_known_op(pair[0], pair[1], self.opsets) for pair in pairs}
        if not all(known.values()):
            for op_type, domain, node_id in zip(op_types, domains, node_ids):
                if not known[op_type, domain]:
                    unknown_ops.setdefault((domain or "ai.onnx", op_type), []).append(node_id)
        # Every input and output name, deduplicated in node order.  Here, not after inference: in
        # the app this runs while the helper infers.
        referenced = {}
        for start, stop in slice_bounds(count):  # a slice at a time, as above
            referenced.update(dict.fromkeys(_chain(_chain(zip(inputs[start:stop], outputs[start:stop])))))

        nodes: list[Optional[Node]] = list(map(_node, node_ids, op_types, names, namespaces, inputs, outputs,
                                               attributes, domains))
        with_bodies = []  # (index, id, op_type, name, namespace, inputs, outputs, attributes, domain)
        for index in with_body_indices:
            with_bodies.append((index, node_ids[index], op_types[index], names[index], namespaces[index],
                                inputs[index], outputs[index], attributes[index], domains[index]))
            nodes[index] = None  # built by _graph, from the inferred node
        return _WalkedNodes(nodes, with_bodies, constants, referenced, unknown_ops)

    def _graph(self, graph: GraphProto, top_level: bool, walked: Optional["_WalkedNodes"] = None,
               inferred: Optional["_Inferred"] = None, weights: Optional["_Weights"] = None) -> Graph:
        """The IR graph of `graph`: shape-inferred, or the graph before inference with `inferred`,
        what inference found (the value types, and the nodes holding subgraphs with their
        inferred bodies).  `walked` and `weights`: its nodes from `_walk_nodes` and its
        initializers from `_weights`, when they were read already (from the same graph before
        inference, which changes neither).  In the app those are read while the helper infers."""
        if walked is None:
            walked = self._walk_nodes(graph)
        if weights is None:
            weights = self._weights(graph)
        if inferred is None:
            inferred = _Inferred(value_type_table(graph), graph.node)
        names, type_ids, type_tuples = inferred.value_types
        types = [None if t is None else TensorType(dtype_name(t[0]), t[1]) for t in type_tuples]
        values: dict[str, Value] = dict(zip(names, map(_value, names, map(types.__getitem__, type_ids))))
        for value in weights.values:
            values[value.name] = value
        self.warnings += weights.warnings
        initializer_names = {value.name for value in weights.values}
        # Tensors no value_info describes, in the order the nodes name them first.
        for value_name in walked.referenced:
            if value_name and value_name not in values:
                values[value_name] = _value(value_name, None)
        for output, proto in walked.constants:
            values[output] = self._constant_node_value(proto, values[output])

        nodes = walked.nodes
        for index, node_id, op_type, name, namespace, inputs, outputs, attributes, domain in walked.with_bodies:
            subgraphs = {}
            for attribute in inferred.nodes[index].attribute:  # the inferred node: its bodies carry their shapes
                if attribute.type == AttributeProto.GRAPH:
                    subgraphs[attribute.name] = self._graph(attribute.g, top_level=False)
                elif attribute.type == AttributeProto.GRAPHS:
                    for i, sub in enumerate(attribute.graphs):
                        subgraphs[f"{attribute.name}[{i}]"] = self._graph(sub, top_level=False)
            nodes[index] = Node(node_id, op_type, name, namespace, inputs, outputs, attributes, subgraphs, domain)
        for (domain, op_type), ids in walked.unknown_ops.items():
            where = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            self.warnings.append(f"op '{op_type}' (domain {domain}) is not a standard ONNX op: {where} "
                                 "shown with shapes where inferable and cost unknown")
        inputs = tuple(i.name for i in graph.input if i.name not in initializer_names)
        outputs = tuple(o.name for o in graph.output)
        return Graph(graph.name or ("main" if top_level else "body"), inputs, outputs, tuple(nodes), values)

    def _weights(self, graph: GraphProto) -> "_Weights":
        warnings: list[str] = []
        return _Weights([self._initializer_value(tensor, warnings) for tensor in graph.initializer], warnings)

    def _initializer_value(self, tensor: TensorProto, warnings: list[str]) -> Value:
        tensor_type = TensorType(dtype_name(tensor.data_type), tuple(int(d) for d in tensor.dims))
        small_data = None
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            location_path, exists = self._external_file(info.get("location", ""))
            location = WeightLocation("external", str(location_path), int(info.get("offset", 0) or 0),
                                      int(info.get("length", 0) or tensor_type.byte_size or 0))
            if not exists:
                warnings.append(f"external weight file '{info.get('location', '')}' of tensor "
                                f"'{tensor.name}' is missing: the graph opens, but the model cannot run")
        elif tensor.name in self.embedded:
            place = self.embedded[tensor.name]
            location = WeightLocation("embedded", str(self.path), place.offset, place.length)
        else:
            location = WeightLocation("inline", str(self.path), 0, tensor_type.byte_size or 0)
            small_data = _small_values(tensor)
        return Value(tensor.name, tensor_type, Initializer(tensor_type, location), small_data)

    def _external_file(self, location: str) -> tuple[Path, bool]:
        """The resolved path of an external data file and whether it exists (once per file: a
        model's thousands of tensors usually share one or two)."""
        if location not in self._external_files:
            path = (self.path.parent / location).resolve()
            self._external_files[location] = (path, path.is_file())
        return self._external_files[location]

    def _constant_node_value(self, node: NodeProto, value: Value) -> Value:
        for attribute in node.attribute:
            if attribute.name == "value" and attribute.type == AttributeProto.TENSOR:
                t = attribute.t
                tensor_type = TensorType(dtype_name(t.data_type), tuple(int(d) for d in t.dims))
                return Value(value.name, value.type or tensor_type, None, _small_values(t))
            if attribute.name in ("value_int", "value_float"):
                return Value(value.name, value.type, None,
                             (attribute.i if attribute.name == "value_int" else attribute.f,))
            if attribute.name in ("value_ints", "value_floats"):
                data = tuple(attribute.ints) if attribute.name == "value_ints" else tuple(attribute.floats)
                return Value(value.name, value.type, None, data)
        return value


# ONNX shape inference is one C++ call that holds the GIL for about 13 ms per 1,000 nodes.  A GUI
# opening a model in a worker thread would freeze for that long, so it can hand inference of
# large graphs to a process of its own (a warm concurrent.futures.ProcessPoolExecutor).  The
# CLI leaves this unset: in one process there is nothing to keep responsive.
INFERENCE_OFFLOAD_NODES = 2000
_inference_executor = None


class _HandedOver:
    """Shape inference running in the executor, the model and its result passed as files.

    Not as call arguments: a process pool pipes them in 64 KB writes by a thread of ours that
    needs the GIL again after each write, and the thread reading the nodes meanwhile holds it
    for 5 ms at a time, so a 22 MB model took seconds to reach the helper (a 100,000-node
    import was 1.2 s slower with the walk overlapping inference than without).  A file is
    written in one call before the walk and read in one call after it.  What comes back is
    not the inferred model (31 MB at 100,000 nodes, written, read and parsed again on the
    critical path) but its `value_type_table` and the nodes holding subgraphs (6.5 MB).
    """

    def __init__(self, executor, model_bytes: bytes):
        import tempfile  # here, not at the top: a cold `inspect` never offloads

        self.directory = tempfile.mkdtemp(prefix="layerscope-inference-")
        self.model_path = os.path.join(self.directory, "model.onnx")
        self.result_path = os.path.join(self.directory, "value_types.bin")
        try:
            with open(self.model_path, "wb") as handle:
                handle.write(model_bytes)
            self.call = executor.submit(infer_value_types_file, self.model_path, self.result_path)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def result(self) -> "_Inferred":
        try:
            self.call.result()
            value_types, bodies = read_value_types(self.result_path)
            return _Inferred(value_types, {index: NodeProto.FromString(node) for index, node in bodies.items()})
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


class _Inferred(NamedTuple):
    """What shape inference found in a graph, as `ModelBuilder._graph` reads it."""

    value_types: tuple  # value_type_table() of the inferred graph
    nodes: object  # index -> inferred NodeProto, for (at least) every node holding subgraphs


def value_type_table(graph: GraphProto) -> tuple[list, list, list]:
    """The described values of `graph` (value_info, then inputs, then outputs) as three plain
    lists: their names, the index of each one's type in the third, and the distinct types, each
    None (not a tensor) or (element type, dims or None), a dim being an int, a str or None.

    Plain lists, because the helper process sends them back (marshal): a 100,000-node model's
    are 6.5 MB, where its whole inferred model was 31 MB to write, read and parse again.
    Exported models repeat a few types thousands of times ([1, 1, 2048] float): one entry per
    distinct serialized TypeProto instead of a walk of its dims per value.
    """
    names, type_ids, types = [], [], []
    seen: dict[bytes, int] = {}
    for infos in (graph.value_info, graph.input, graph.output):
        for info in infos:
            type_proto = info.type
            key = type_proto.SerializeToString()
            type_id = seen.get(key)
            if type_id is None:
                type_id = seen[key] = len(types)
                types.append(_type_tuple(type_proto))
            names.append(info.name)
            type_ids.append(type_id)
    return names, type_ids, types


def _type_tuple(type_proto: TypeProto) -> Optional[tuple]:
    if not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in tensor_type.shape.dim)
    return tensor_type.elem_type, shape


# Serialized attribute fields `type: GRAPH` and `type: GRAPHS` (field 20, varint 5 / 10) as the
# protobuf library writes them (inference's output is always its serialization, so canonical
# varints): a model without either byte string has no node holding subgraphs.
_GRAPH_ATTRIBUTE_TYPE = re.compile(b"\xa0\x01[\x05\x0a]")
_VALUE_TYPES_MAGIC = b"LSVT1\n"


def infer_value_types_file(model_path: str, result_path: str) -> None:
    """Shape inference of a serialized model file (what the helper process runs): writes the
    inferred graph's `value_type_table` and its nodes holding subgraphs, serialized (their
    bodies' shapes are read from them), for `read_value_types`."""
    with open(model_path, "rb") as handle:
        inferred_bytes = infer_shapes_bytes(handle.read())
    graph = ModelProto.FromString(inferred_bytes).graph
    bodies = {}
    if _GRAPH_ATTRIBUTE_TYPE.search(inferred_bytes):  # one C-speed search (12 ms at 100k nodes), not a node walk
        graph_kinds = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
        for index, node in enumerate(graph.node):
            if any(attribute.type in graph_kinds for attribute in node.attribute):
                bodies[index] = node.SerializeToString()
    payload = marshal.dumps((value_type_table(graph), bodies))
    with open(result_path, "wb") as handle:
        handle.write(_VALUE_TYPES_MAGIC + len(payload).to_bytes(8, "little") + payload)


def warm_up_inference() -> None:
    """A helper process's first call: loads this module (what `infer_value_types_file` needs, ~40 ms)
    and ONNX's operator schemas while no model waits for them."""
    infer_shapes_bytes(b"")


def read_value_types(result_path: str) -> tuple[tuple, dict]:
    """(value_type_table, {node index: serialized NodeProto}) from `infer_value_types_file`'s file;
    ValueError naming the file when it is not such a file or is cut short."""
    with open(result_path, "rb") as handle:
        data = handle.read()
    header = len(_VALUE_TYPES_MAGIC) + 8
    if not data.startswith(_VALUE_TYPES_MAGIC):
        raise ValueError(f"the helper process's result {result_path} is not a value-type table")
    expected = header + int.from_bytes(data[len(_VALUE_TYPES_MAGIC):header], "little")
    if len(data) < header or len(data) != expected:
        raise ValueError(f"the helper process's result {result_path} is truncated "
                         f"({len(data)} bytes{f', {expected} expected' if len(data) >= header else ''})")
    try:
        (names, type_ids, types), bodies = marshal.loads(data[header:])
        if len(names) != len(type_ids) or (type_ids and not 0 <= min(type_ids) <= max(type_ids) < len(types)):
            raise ValueError("its lists disagree")
    except (ValueError, EOFError, TypeError) as exc:
        raise ValueError(f"the helper process's result {result_path} is unreadable ({exc})") from None
    return (names, type_ids, types), bodies


def set_inference_executor(executor) -> None:
    """Run shape inference of graphs with INFERENCE_OFFLOAD_NODES+ nodes in `executor` (None: in-process)."""
    global _inference_executor
    _inference_executor = executor


def _unique_id(candidate: str, used: set[str]) -> str:
    node_id, suffix = candidate, 1
    while node_id in used:
        suffix += 1
        node_id = f"{candidate}#{suffix}"
    used.add(node_id)
    return node_id


def _unique_ids(candidates: list[str]) -> list[str]:
    """Node ids in node order: each candidate, or it with "#2", "#3"... when taken already."""
    distinct: set[str] = set()
    for part in parts(candidates):
        distinct.update(part)
    if len(distinct) == len(candidates):
        return candidates  # the usual case: all names distinct (a C-level set build per slice)
    used: set[str] = set()
    return [_unique_id(candidate, used) for candidate in candidates]


def _node_attributes(count: int, attribute_fields: list[tuple]) -> tuple[list[dict], list[int]]:
    """Each of `count` nodes' attributes as {name: value}, given the repeated AttributeProto field
    of each node that has attributes (its index, the field), and the indices of the nodes holding
    subgraphs (GRAPH/GRAPHS attributes: their bodies are read from the inferred graph, which has
    their shapes, so they are left out here).

    Nodes of one op mostly carry the same attributes (every Conv its pads): a number, string or
    list of them is read once per distinct serialized attribute (its name, type and value; 2 us
    for a 4-int `pads` read from the protobuf, 0.5 us to serialize and look up) and shared, as
    such values are immutable.  Tensors and bodies are never serialized for this (they can be
    large); tensor descriptions are dicts, one per node."""
    attributes = [{} for _ in range(count)]
    with_bodies: list[int] = []
    known: dict[bytes, tuple[str, object]] = {}  # serialized attribute -> (name, value)
    for index, field in attribute_fields:
        values = attributes[index]
        for attribute in field[:]:  # a slice: iterating the field ends in an IndexError
            kind = attribute.type
            if kind in _SHARED_KINDS:
                key = attribute.SerializeToString()
                entry = known.get(key)
                if entry is None:
                    entry = known[key] = (attribute.name, _attribute_value(attribute))
                values[entry[0]] = entry[1]
            elif kind in _GRAPH_KINDS:
                if not with_bodies or with_bodies[-1] != index:
                    with_bodies.append(index)
            else:
                values[attribute.name] = _attribute_value(attribute)
    return attributes, with_bodies


def _namespaces(names: list[str]) -> list[str]:
    """`_namespace` of each node name."""
    if any("//" in "\0".join(part) for part in parts(names)):  # a scope with an empty part, or ending in
        # "/": the general rule (names sliced: engine.gil_slices)
        namespace_of: dict[str, str] = {}  # one call per distinct scope
        scopes = [name.rpartition("/")[0] for name in names]
        for scope in scopes:
            if scope not in namespace_of:
                namespace_of[scope] = _scope_namespace(scope)
        return list(map(namespace_of.__getitem__, scopes))
    # No name holds "//", so no scope has an empty part but a leading one: the namespace is the
    # name up to its last "/", without a leading "/" ("" when there is no "/").
    namespaces = [name[1:name.rfind("/")] if name[:1] == "/" else name[:max(name.rfind("/"), 0)] for name in names]
    shared: dict[str, str] = {}  # one string per namespace, kept by all its nodes (8 MB less at 100,000)
    result: list[str] = []
    for part in parts(namespaces):
        result += map(shared.setdefault, part, part)
    return result


# Building the IR's frozen dataclasses fast.  Their `__init__` stores each field through
# `object.__setattr__` (frozen classes forbid plain stores): ~1.3 us per Node, a fifth of the node
# walk.  An object of a plain class with the same slots takes plain stores (~0.25 us for all nine)
# and then becomes the IR class by `__class__` assignment, which Python allows between classes of
# identical layout: the result is the object the constructor builds (tests compare them field by
# field).  Only for classes without `__post_init__` whose fields are exactly the ones set below.
class _NodeSlots:
    __slots__ = Node.__slots__


class _ValueSlots:
    __slots__ = Value.__slots__


def _node(node_id: str, op_type: str, name: str, namespace: str, inputs: tuple, outputs: tuple,
          attributes: dict, domain: str) -> Node:
    """Node(node_id, op_type, name, namespace, inputs, outputs, attributes, {}, domain)."""
    node = _NodeSlots()
    node.id, node.op_type, node.name, node.namespace = node_id, op_type, name, namespace
    node.inputs, node.outputs, node.attributes, node.subgraphs, node.domain = inputs, outputs, attributes, {}, domain
    node.__class__ = Node
    return node


def _value(name: str, value_type: Optional[TensorType]) -> Value:
    """Value(name, value_type)."""
    value = _ValueSlots()
    value.name, value.type, value.initializer, value.small_data, value.quantization = (
        name, value_type, None, None, None)
    value.__class__ = Value
    return value


def _builds_like_constructor(cls: type, field_names: tuple) -> bool:
    return (tuple(f.name for f in dataclass_fields(cls)) == field_names and cls.__slots__ == field_names
            and not hasattr(cls, "__post_init__"))


# Node or Value changed (a field, a __post_init__): their constructors then build them (slower)
# until `_node`/`_value` are updated; tests/importers/test_onnx_walk.py says so.
FAST_IR_CONSTRUCTION = (
    _builds_like_constructor(Node, ("id", "op_type", "name", "namespace", "inputs", "outputs", "attributes",
                                    "subgraphs", "domain"))
    and _builds_like_constructor(Value, ("name", "type", "initializer", "small_data", "quantization")))
if not FAST_IR_CONSTRUCTION:
    def _node(node_id, op_type, name, namespace, inputs, outputs, attributes, domain):  # noqa: F811
        return Node(node_id, op_type, name, namespace, inputs, outputs, attributes, {}, domain)

    def _value(name, value_type):  # noqa: F811
        return Value(name, value_type)


# Column readers of NodeProto fields for `map` (C-level calls).
_OP_TYPE_OF, _NAME_OF, _DOMAIN_OF = attrgetter("op_type"), attrgetter("name"), attrgetter("domain")
_INPUT_OF, _OUTPUT_OF, _ATTRIBUTE_OF = attrgetter("input"), attrgetter("output"), attrgetter("attribute")
_ALL = itemgetter(slice(None))  # container[:]: a repeated field copied to a list in one C call
_chain = chain.from_iterable
_GRAPH_KINDS = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
_SHARED_KINDS = frozenset({AttributeProto.INT, AttributeProto.FLOAT, AttributeProto.STRING, AttributeProto.INTS,
                           AttributeProto.FLOATS, AttributeProto.STRINGS})


class _Weights(NamedTuple):
    """A graph's initializers as IR values, and the warnings about them (missing external files)."""

    values: list
    warnings: list


class _WalkedNodes(NamedTuple):
    """What ModelBuilder._walk_nodes read of a graph's nodes."""

    nodes: list  # the IR nodes in file order; None where a node holds subgraphs (built later)
    with_bodies: list  # the fields of those nodes, with their index
    constants: list  # (output name, NodeProto) of each Constant node
    referenced: dict  # every input and output name of the nodes, in the order they are first named
    unknown_ops: dict  # (domain, op_type) -> ids of the nodes of ops ONNX does not define


def _namespace(node_name: str) -> str:
    """'/encoder/layer1/conv/Conv' -> 'encoder/layer1/conv' (PyTorch and TF style module scopes)."""
    return _scope_namespace(node_name.rpartition("/")[0])


def _scope_namespace(scope: str) -> str:
    """'/encoder/layer1/conv' -> 'encoder/layer1/conv': a node name's part before its last "/"."""
    if "//" not in scope and not scope.endswith("/"):
        # The usual scope has no empty parts but the leading one: no split and join (a model
        # whose every node has a scope of its own asks this once per node).
        return scope[1:] if scope.startswith("/") else scope
    return "/".join(part for part in scope.split("/") if part)


# struct codes of the element types whose small values the analysis reads (shape vectors, axes,
# scalars); little-endian as ONNX stores raw_data.  Decoded without numpy, which the CLI's
# inspect would otherwise import for this alone.
_STRUCT_CODES = {
    TensorProto.FLOAT: "f", TensorProto.DOUBLE: "d", TensorProto.FLOAT16: "e", TensorProto.INT8: "b",
    TensorProto.UINT8: "B", TensorProto.INT16: "h", TensorProto.UINT16: "H", TensorProto.INT32: "i",
    TensorProto.UINT32: "I", TensorProto.INT64: "q", TensorProto.UINT64: "Q", TensorProto.BOOL: "?",
}
# Where each type's values live when not in raw_data (onnx.proto: 16-bit floats as their bits).
_TYPED_FIELDS = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT32: "uint64_data", TensorProto.UINT64: "uint64_data",
    **{t: "int32_data" for t in (TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT16,
                                 TensorProto.UINT8, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.BFLOAT16)},
}


def _bfloat16(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]


def _small_values(tensor: TensorProto) -> Optional[tuple]:
    """The values of a small tensor as a flat tuple (None when too big, not stored inline, or of a
    type the analysis never reads, such as strings or 8-bit floats)."""
    count = 1
    for d in tensor.dims:
        count *= d
    if count > SMALL_TENSOR_BYTES // 4 or tensor.data_location == TensorProto.EXTERNAL:
        return None
    data_type = tensor.data_type
    if tensor.HasField("raw_data"):
        raw = tensor.raw_data
        if data_type == TensorProto.BFLOAT16:
            if len(raw) != 2 * count:
                return None
            return tuple(_bfloat16(bits) for bits in struct.unpack(f"<{count}H", raw))
        code = _STRUCT_CODES.get(data_type)
        if code is None or len(raw) != count * struct.calcsize(code):
            return None
        return struct.unpack(f"<{count}{code}", raw)
    field_name = _TYPED_FIELDS.get(data_type)
    values = tuple(getattr(tensor, field_name)) if field_name else ()
    if not values or len(values) != count:
        return None
    if data_type == TensorProto.FLOAT16:
        return tuple(struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0] for bits in values)
    if data_type == TensorProto.BFLOAT16:
        return tuple(_bfloat16(bits) for bits in values)
    if data_type == TensorProto.BOOL:
        return tuple(bool(v) for v in values)
    return values


def _attribute_value(attribute: AttributeProto) -> object:
    kind = attribute.type
    if kind == AttributeProto.INT:
        return attribute.i
    if kind == AttributeProto.FLOAT:
        return attribute.f
    if kind == AttributeProto.STRING:
        return attribute.s.decode("utf-8", "replace")
    if kind == AttributeProto.INTS:
        return tuple(attribute.ints)
    if kind == AttributeProto.FLOATS:
        return tuple(attribute.floats)
    if kind == AttributeProto.STRINGS:
        return tuple(s.decode("utf-8", "replace") for s in attribute.strings)
    if kind == AttributeProto.TENSOR:
        t = attribute.t
        values = _small_values(t)
        tensor_type = TensorType(dtype_name(t.data_type), tuple(int(d) for d in t.dims))
        return {"tensor": tensor_type.shape_text(), "dtype": tensor_type.dtype,
                **({"values": values} if values is not None and len(values) <= 16 else {})}
    return f"<{AttributeProto.AttributeType.Name(kind).lower()}>"


_KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


def _is_known_op(op_type: str, domain: str, opsets: Mapping[str, int]) -> bool:
    if domain not in _KNOWN_DOMAINS:
        return False
    try:
        return has_schema(op_type, domain)
    except Exception:
        return False
