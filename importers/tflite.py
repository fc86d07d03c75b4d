"""TFLite / LiteRT importer: `.tflite` flatbuffers -> engine.ir.Model.

Read with the flatbuffer schema that ai-edge-litert ships (`schema_py_generated.py`: tensor
types up to FLOAT8_E5M2, builtin operators up to code 209; the `tflite` package on PyPI is
behind it), over a memory map: `Model.GetRootAs` walks the tables in place, so opening a model
reads its graph, never its weights (flatbuffer_utils.read_model would copy every buffer).
Buffers of models over 2 GB live after the flatbuffer at `offset`/`size`; both kinds are
described by a WeightLocation and never read, except small int32/int64/float32 constants
(shape vectors, paddings, axes) that the analysis needs.

NODE ID CONTRACT: an operator is identified by its index in its subgraph.  Every operator node
carries `operator_node_id(subgraph_index, operator_index)`; the LiteRT host target and the
Android target key their timings by the same ids, so their profiles paint onto the graph and
export as Model Explorer node data keyed by operator index.

Each operator becomes one Node:
- op_type: the builtin operator name from the schema ("CONV_2D", "DEPTHWISE_CONV_2D"), or, for a
  custom operator, its `custom_code` ("Convolution2DTransposeBias"), with domain "custom";
- attributes: the builtin options (enums by name: padding "SAME", fused activation "RELU6");
  custom options decoded as a flexbuffer map where they are one, else their byte count;
- namespace: the scope of the operator's first output tensor name
  ("model/block_3/conv/Conv2D;..." -> "model/block_3/conv"), so the graph folds by scope.
Subgraphs become graphs of their own (graph k holds subgraph k); control-flow operators (WHILE,
IF, CALL_ONCE) also reference their bodies through Node.subgraphs.  Tensors are NHWC: the graph
is marked channels_last so the analysis finds spatial sizes on axes 1-2.  Quantization
parameters (scales, zero points, axis) are kept on each Value.
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from engine.ir import Graph, Initializer, Model, ModelLoadError, Node, TensorType, Value, WeightLocation

FORMAT = "tflite"
EXTENSIONS = (".tflite",)
FILE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer

# Constants up to this many elements keep their values (shape vectors, paddings, axes).
SMALL_CONSTANT_ELEMENTS = 1024
# Per-channel quantization keeps at most this many scales / zero points on a Value (plus the count).
QUANTIZATION_VALUES_KEPT = 16

# schema TensorType -> engine.ir dtype names (numpy spelling)
_DTYPES = {
    0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool", 7: "int16",
    8: "complex64", 9: "int8", 10: "float64", 11: "complex128", 12: "uint64", 13: "resource",
    14: "variant", 15: "uint32", 16: "uint16", 17: "int4", 18: "bfloat16", 19: "int2", 20: "uint4",
    21: "float8e4m3fn", 22: "float8e5m2",
}
_STRUCT_CODES = {"float32": "f", "int32": "i", "int64": "q", "float16": "e", "int8": "b", "uint8": "B",
                 "int16": "h", "bool": "?"}
_CUSTOM_CODE = 32  # BuiltinOperator.CUSTOM
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127
# Options that name a subgraph index, per control-flow operator: attribute -> Node.subgraphs key.
_SUBGRAPH_OPTIONS = {"condSubgraphIndex": "cond", "bodySubgraphIndex": "body", "thenSubgraphIndex": "then",
                     "elseSubgraphIndex": "else", "initSubgraphIndex": "init", "subgraphIndex": "subgraph",
                     "decompositionSubgraphIndex": "decomposition", "bodyIndex": "body"}


def operator_node_id(subgraph_index: int, operator_index: int) -> str:
    """The IR node id of operator `operator_index` in subgraph `subgraph_index`.

    Subgraph 0 (the main graph) uses the bare operator index ("12"), as LiteRT's profilers
    and benchmark_model name operators; other subgraphs (while/if bodies) are prefixed
    ("2/12") so ids stay unique across the whole model.
    """
    if subgraph_index == 0:
        return str(operator_index)
    return f"{subgraph_index}/{operator_index}"


def parse_operator_node_id(node_id: str) -> tuple[int, int]:
    """The inverse of operator_node_id: "12" -> (0, 12), "2/12" -> (2, 12)."""
    subgraph, _, operator = node_id.rpartition("/")
    return (int(subgraph) if subgraph else 0), int(operator)


# ----------------------------------------------------------------------------- sniffing

def sniff(path: Path) -> bool:
    """True when bytes 4..8 hold the TFLite file identifier "TFL3"."""
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == FILE_IDENTIFIER


def schema():
    """ai-edge-litert's generated flatbuffer schema module (imported on first use: it is 20,000
    lines, and opening an ONNX model must not pay for it)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise ModelLoadError("", "reading .tflite models needs the ai-edge-litert package "
                                 f"(pip install 'layerscope[tflite]'): {exc}") from None
    return schema_py_generated


# ----------------------------------------------------------------------------- loading

def load(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Model:
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(str(path), "is a directory, not a .tflite file")
    size = path.stat().st_size
    if size < 8:
        raise ModelLoadError(str(path), "the file is empty or truncated (a .tflite file is a flatbuffer "
                                        "of at least a few hundred bytes)")
    try:
        fb = schema()
    except ModelLoadError as exc:
        raise ModelLoadError(str(path), exc.problem) from None
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[4:8] != FILE_IDENTIFIER:
            raise ModelLoadError(str(path), "not a TFLite model: the file does not carry the TFLite "
                                            "identifier 'TFL3' at byte 4")
        try:
            return _Reader(fb, buf, path, dict(input_shapes or {})).model()
        except ModelLoadError:
            raise
        except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError) as exc:
            # A flatbuffer offset pointing outside the file: truncated or corrupted.
            raise ModelLoadError(str(path), f"the TFLite flatbuffer is truncated or corrupted "
                                            f"({type(exc).__name__}: {exc})") from None


class _Reader:
    """Walks one memory-mapped flatbuffer.  Every value kept is copied out of the map (ints,
    strings, tuples), so the map can be closed when the model is built."""

    def __init__(self, fb, buf: mmap.mmap, path: Path, input_shapes: dict):
        self.fb = fb
        self.buf = buf
        self.path = path
        self.input_shapes = input_shapes
        self.file_size = len(buf)
        self.warnings: list[str] = []
        self.root = fb.Model.GetRootAs(buf, 0)
        self.builtin_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        self.activation_names = {v: k for k, v in vars(fb.ActivationFunctionType).items() if not k.startswith("_")}
        self.padding_names = {v: k for k, v in vars(fb.Padding).items() if not k.startswith("_")}
        self.options_names = {v: k for k, v in vars(fb.BuiltinOptions).items() if not k.startswith("_")}
        self.options2_names = {v: k for k, v in vars(fb.BuiltinOptions2).items() if not k.startswith("_")}

    # -- model ----------------------------------------------------------------------------

    def model(self) -> Model:
        root = self.root
        if root.SubgraphsLength() == 0:
            raise ModelLoadError(str(self.path), "the TFLite model has no subgraph (nothing to show or run)")
        op_codes = [self._op_code(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())]
        buffer_count = root.BuffersLength()
        graphs = [self._graph(index, root.Subgraphs(index), op_codes, buffer_count)
                  for index in range(root.SubgraphsLength())]
        # Control-flow operators point at bodies by subgraph index: attach the graphs themselves.
        linked = []
        for graph in graphs:
            nodes = []
            for node in graph.nodes:
                refs = {key: graphs[int(node.attributes[attr])] for attr, key in _SUBGRAPH_OPTIONS.items()
                        if isinstance(node.attributes.get(attr), int) and 0 <= int(node.attributes[attr]) < len(graphs)}
                nodes.append(Node(node.id, node.op_type, node.name, node.namespace, node.inputs, node.outputs,
                                  node.attributes, refs, node.domain) if refs else node)
            linked.append(Graph(graph.name, graph.inputs, graph.outputs, tuple(nodes), graph.values,
                                channels_last=True))
        for name in self.input_shapes:
            if name not in linked[0].inputs:
                raise ModelLoadError(str(self.path), f"--shape names input '{name}', but the model's inputs "
                                                     f"are: {', '.join(linked[0].inputs)}")
        metadata = {"schema_version": str(root.Version()),
                    "description": _text(root.Description()),
                    "subgraphs": str(len(graphs)),
                    "operator_codes": str(len(op_codes))}
        signatures = self._signatures(graphs)
        if signatures:
            metadata["signatures"] = "; ".join(signatures)
        metadata.update(self._metadata_entries())
        custom = sorted({code for code, is_custom in op_codes if is_custom})
        if custom:
            metadata["custom_ops"] = ", ".join(custom)
        metadata = {k: v for k, v in metadata.items() if v}
        producer = metadata.get("description") or "TFLite"
        return Model(FORMAT, producer, tuple(linked), metadata, str(self.path), tuple(self.warnings))

    def _op_code(self, code) -> tuple[str, bool]:
        """(op name, is custom).  The effective builtin code is the larger of the deprecated int8
        field and the int32 one (schema rule: codes above 127 only fit the new field)."""
        builtin = max(int(code.DeprecatedBuiltinCode()), int(code.BuiltinCode()))
        if builtin == _CUSTOM_CODE:
            return _text(code.CustomCode()) or "CUSTOM", True
        name = self.builtin_names.get(builtin)
        if name is None:
            self.warnings.append(f"builtin operator code {builtin} is newer than the schema of the installed "
                                 "ai-edge-litert: shown as BUILTIN_{builtin}, cost unknown")
            name = f"BUILTIN_{builtin}"
        return name, False

    def _signature_key(self, subgraph_index: int) -> str:
        """The key of the signature that runs this subgraph ('' if none).  An unnamed subgraph is called by
        it, then "main" / "subgraph_K": the names Model Explorer's TFLite adapter gives, so node data
        exported per graph (engine.report.exports) lands on the same graph there."""
        root = self.root
        for i in range(root.SignatureDefsLength()):
            signature = root.SignatureDefs(i)
            if int(signature.SubgraphIndex()) == subgraph_index:
                return _text(signature.SignatureKey())
        return ""

    def _signatures(self, graphs: list[Graph]) -> list[str]:
        root, texts = self.root, []
        for i in range(root.SignatureDefsLength()):
            signature = root.SignatureDefs(i)
            key = _text(signature.SignatureKey()) or f"signature {i}"
            index = int(signature.SubgraphIndex())
            inputs = [_text(signature.Inputs(j).Name()) for j in range(signature.InputsLength())]
            outputs = [_text(signature.Outputs(j).Name()) for j in range(signature.OutputsLength())]
            texts.append(f"{key} (subgraph {index}): {', '.join(inputs)} -> {', '.join(outputs)}")
        return texts

    def _metadata_entries(self) -> dict[str, str]:
        """Named metadata buffers: small text ones (min_runtime_version) are shown, others sized."""
        root, entries = self.root, {}
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            name = _text(entry.Name())
            if not name:
                continue
            location = self._buffer_location(int(entry.Buffer()))
            if location is None:
                continue
            if location.length <= 64:
                raw = bytes(self.buf[location.offset:location.offset + location.length]).rstrip(b"\0")
                try:
                    entries[f"metadata.{name}"] = raw.decode("ascii")
                    continue
                except UnicodeDecodeError:
                    pass
            entries[f"metadata.{name}"] = f"{location.length} bytes"
        return entries

    # -- graphs ---------------------------------------------------------------------------

    def _graph(self, index: int, subgraph, op_codes: list[tuple[str, bool]], buffer_count: int) -> Graph:
        tensor_count = subgraph.TensorsLength()
        names: list[str] = []
        used: set[str] = set()
        values: dict[str, Value] = {}
        graph_inputs = set(_int_vector(subgraph, "Inputs"))
        for t in range(tensor_count):
            tensor = subgraph.Tensors(t)
            name = _text(tensor.Name()) or f"tensor_{t}"
            if name in used:  # names are not guaranteed unique; value names must be
                name = f"{name}#{t}"
            used.add(name)
            names.append(name)
            values[name] = self._value(name, tensor, buffer_count, is_input=t in graph_inputs)

        def tensor_name(i: int) -> str:
            return names[i] if 0 <= i < tensor_count else ""  # -1: an omitted optional input

        nodes: list[Node] = []
        unknown_custom: dict[str, list[str]] = {}
        for op_index in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(op_index)
            code_index = int(operator.OpcodeIndex())
            if not 0 <= code_index < len(op_codes):
                raise ModelLoadError(str(self.path), f"operator {op_index} of subgraph {index} uses operator "
                                                     f"code {code_index}; the model has {len(op_codes)}")
            op_type, is_custom = op_codes[code_index]
            node_id = operator_node_id(index, op_index)
            inputs = tuple(tensor_name(i) for i in _int_vector(operator, "Inputs"))
            outputs = tuple(tensor_name(i) for i in _int_vector(operator, "Outputs"))
            attributes = self._custom_options(operator, op_type) if is_custom else self._builtin_options(operator)
            if is_custom:
                attributes["custom_code"] = op_type
                unknown_custom.setdefault(op_type, []).append(node_id)
            name = next((o for o in outputs if o), node_id)
            nodes.append(Node(node_id, op_type, name, _namespace(name), inputs, outputs, attributes,
                              {}, "custom" if is_custom else ""))
        for op_type, ids in unknown_custom.items():
            where = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            self.warnings.append(f"custom op '{op_type}' (operators {where}{'' if index == 0 else f' of subgraph {index}'}): "
                                 "runs only where the runtime has this kernel registered"
                                 + ("" if op_type in _CUSTOM_OPS_WITH_COSTS else "; cost unknown"))
        graph_inputs_named = tuple(tensor_name(i) for i in _int_vector(subgraph, "Inputs"))
        graph_outputs = tuple(tensor_name(i) for i in _int_vector(subgraph, "Outputs"))
        name = _text(subgraph.Name()) or self._signature_key(index) or ("main" if index == 0 else f"subgraph_{index}")
        return Graph(name, graph_inputs_named, graph_outputs, tuple(nodes), values, channels_last=True)

    # -- tensors --------------------------------------------------------------------------

    def _value(self, name: str, tensor, buffer_count: int, is_input: bool) -> Value:
        dtype = _DTYPES.get(int(tensor.Type()), f"tflite-type-{int(tensor.Type())}")
        shape: Optional[tuple] = tuple(_int_vector(tensor, "Shape"))
        signature = tuple(_int_vector(tensor, "ShapeSignature"))
        if signature and len(signature) == len(shape):
            # -1 marks a dimension the model leaves free (the stored shape holds 1 in its place)
            shape = tuple(None if s < 0 else d for d, s in zip(shape, signature))
        if tensor.ShapeIsNone() and not signature:
            shape = None  # rank unknown (never a scalar: a scalar has an empty Shape vector)
        if is_input:
            given = self.input_shapes.get(name)
            if given is not None:
                shape = tuple(int(d) for d in given)
            elif shape and shape[0] is None and all(isinstance(d, int) for d in shape[1:]):
                shape = (1,) + shape[1:]
                self.warnings.append(f"input '{name}': free batch dimension taken as 1")
            elif shape and any(d is None for d in shape):
                self.warnings.append(f"input '{name}' has free dimensions: costs that depend on them are unknown; "
                                     f"fix them with --shape {name}=...")
        tensor_type = TensorType(dtype, shape)
        initializer, small = None, None
        buffer_index = int(tensor.Buffer())
        if 0 < buffer_index < buffer_count:  # buffer 0 is the empty sentinel
            location = self._buffer_location(buffer_index)
            if location is not None and location.length > 0:
                initializer = Initializer(tensor_type, location)
                small = self._small_values(tensor_type, location)
        return Value(name, tensor_type, initializer, small, self._quantization(tensor))

    def _buffer_location(self, buffer_index: int) -> Optional[WeightLocation]:
        """Where a buffer's bytes are in the file, without reading them: inside the flatbuffer (a
        byte vector) or after it (offset/size, models over 2 GB)."""
        if not 0 <= buffer_index < self.root.BuffersLength():
            return None
        buffer = self.root.Buffers(buffer_index)
        offset, size = int(buffer.Offset()), int(buffer.Size())
        if offset > 1:  # 0 and 1 are "not set" sentinels
            if offset + size > self.file_size:
                self.warnings.append(f"buffer {buffer_index} lies beyond the end of the file "
                                     f"({offset}+{size} > {self.file_size} bytes): the file is truncated")
            return WeightLocation("embedded", str(self.path), offset, size)
        field = buffer._tab.Offset(4)
        if field == 0:
            return None
        length = int(buffer.DataLength())
        start = int(buffer._tab.Vector(field))
        return WeightLocation("embedded", str(self.path), start, length)

    def _small_values(self, tensor_type: TensorType, location: WeightLocation) -> Optional[tuple]:
        code = _STRUCT_CODES.get(tensor_type.dtype)
        count = tensor_type.element_count
        if code is None or count is None or count > SMALL_CONSTANT_ELEMENTS:
            return None
        if count * struct.calcsize(code) != location.length or location.offset + location.length > self.file_size:
            return None
        return struct.unpack_from(f"<{count}{code}", self.buf, location.offset)

    def _quantization(self, tensor) -> Optional[Mapping[str, Any]]:
        q = tensor.Quantization()
        if q is None:
            return None
        scales = q.ScaleLength()
        zero_points = q.ZeroPointLength()
        result: dict[str, Any] = {}
        if scales:
            result["scale"] = tuple(float(q.Scale(i)) for i in range(min(scales, QUANTIZATION_VALUES_KEPT)))
            result["zero_point"] = tuple(int(q.ZeroPoint(i)) for i in range(min(zero_points, QUANTIZATION_VALUES_KEPT)))
            result["channels"] = scales
            if scales > 1:
                result["axis"] = int(q.QuantizedDimension())
        if q.MinLength():
            result["min"] = tuple(float(q.Min(i)) for i in range(min(q.MinLength(), QUANTIZATION_VALUES_KEPT)))
            result["max"] = tuple(float(q.Max(i)) for i in range(min(q.MaxLength(), QUANTIZATION_VALUES_KEPT)))
        if q.DetailsType():
            result["details"] = f"custom quantization (type {int(q.DetailsType())})"
        if tensor.Sparsity() is not None:
            result["sparse"] = True
        return result or None

    # -- options --------------------------------------------------------------------------

    def _builtin_options(self, operator) -> dict[str, object]:
        attributes: dict[str, object] = {}
        for kind, table, creator, names in (
                (operator.BuiltinOptionsType(), operator.BuiltinOptions(), self.fb.BuiltinOptionsCreator,
                 self.options_names),
                (operator.BuiltinOptions2Type(), operator.BuiltinOptions2(), self.fb.BuiltinOptions2Creator,
                 self.options2_names)):
            if not kind or table is None:
                continue
            options = creator(kind, table)
            if options is None:
                continue
            attributes["options"] = names.get(kind, str(kind))
            for key, value in vars(options).items():
                attributes[key] = self._option_value(key, value)
        return attributes

    def _option_value(self, key: str, value):
        if key == "fusedActivationFunction":
            return self.activation_names.get(value, value)
        if key == "padding":
            return self.padding_names.get(value, value)
        if isinstance(value, (bool, int, float, str)) or value is None:
            return value
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            return tuple(value[:64])
        return str(value)

    def _custom_options(self, operator, op_type: str) -> dict[str, object]:
        length = int(operator.CustomOptionsLength())
        if not length:
            return {}
        start = int(operator._tab.Vector(operator._tab.Offset(14)))
        raw = bytes(self.buf[start:start + min(length, 1 << 16)])
        known = _CUSTOM_STRUCT_OPTIONS.get(op_type)
        if known is not None and len(raw) >= struct.calcsize(known[0]):
            # mediapipe's custom kernels read a C struct, not a flexbuffer
            return dict(zip(known[1], struct.unpack_from(known[0], raw)))
        try:
            from flatbuffers import flexbuffers
            decoded = flexbuffers.Loads(raw)
        except Exception:
            return {"custom_options_bytes": length}
        if isinstance(decoded, dict):
            return {str(k): _plain(v) for k, v in decoded.items()}
        return {"custom_options_bytes": length}


# mediapipe custom kernels whose options are a raw TfLite*Params struct: struct format, field names.
# TfLiteTransposeConvParams / TfLitePoolParams (tensorflow/lite/core/c/builtin_op_data.h).
_CUSTOM_STRUCT_OPTIONS = {
    "Convolution2DTransposeBias": ("<iii", ("padding", "stride_w", "stride_h")),
    "MaxPoolingWithArgmax2D": ("<iiiiii", ("padding", "stride_w", "stride_h", "filter_width", "filter_height",
                                            "activation")),
    "MaxUnpooling2D": ("<iiiiii", ("padding", "stride_w", "stride_h", "filter_width", "filter_height",
                                    "activation")),
}
# Custom ops the cost model knows (engine/analysis/costs.py); warnings say "cost unknown" for the rest.
_CUSTOM_OPS_WITH_COSTS = {"Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D"}


def _plain(value):
    """A flexbuffer value as plain Python (bytes and nested containers shortened for display)."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value[:64])
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _int_vector(table, field: str) -> list[int]:
    length = getattr(table, f"{field}Length")()
    getter = getattr(table, field)
    return [int(getter(i)) for i in range(length)]


def _text(raw) -> str:
    if raw is None:
        return ""
    if isinstance(raw, (bytes, bytearray)):
        return raw.decode("utf-8", "replace")
    return str(raw)


def _namespace(tensor_name: str) -> str:
    """The scope of a TF-converted tensor name: 'model/block_3/conv/Conv2D;model/...' -> 'model/block_3/conv'.

    The converter joins the names of fused ops with ';'; the first names the operator."""
    first = tensor_name.split(";", 1)[0]
    if "/" not in first:
        return ""
    return "/".join(part for part in first.split("/")[:-1] if part)
