"""Core ML importer: `.mlmodel` files and `.mlpackage` directories -> engine.ir.Model.

The spec is read with coremltools' protobuf classes, which work on every
platform (only prediction needs macOS).  Three model families become graphs:

- NeuralNetwork (plain, classifier, regressor): one node per layer, the layer's
  oneof name as op type ("convolution", "innerProduct", "activation" with the
  kind in attributes["activation"], ...).  Weights live inside the spec; they
  become constant input Values named "<layer>/weight", "<layer>/bias", ... in
  ONNX layout.  Specs rarely carry per-layer shapes, so shapes are propagated
  from the model inputs through the common layers.  Legacy (rank-5
  [Seq,B,C,H,W]) blobs are shown as [1,C,H,W].
- ML Program: the default function's block; one node per MIL operation except
  `const` and `constexpr_*` ops, whose outputs are constant Values (Core ML
  materialises them at load time; they cost nothing per prediction).  Weights
  in weights/weight.bin are described by WeightLocation(kind="blob"), whose
  offset is the blobFileValue offset of the spec: that points at the 64-byte
  MIL blob metadata record, the data follows it.
- Pipelines: one graph per sub-model.

Any other model type (tree ensembles, GLMs, ...) opens as one opaque node with
a warning.  Weights are never read: weight.bin is only checked for presence
and size.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from engine.ir import (
    FLOAT_DTYPES,
    Graph,
    Initializer,
    Model,
    ModelLoadError,
    Node,
    TensorType,
    Value,
    WeightLocation,
)
from importers import content_kind, not_a_model

FORMAT = "coreml"
EXTENSIONS = (".mlmodel", ".mlpackage")
# An .mlpackage is a directory: a directory no importer claims is explained by this one.
DIRECTORY_FORMAT = True

# Field numbers of the `Model` message's model-type oneof (Model.proto).  A
# Core ML spec starts with specificationVersion (1), description (2),
# isUpdatable (10) and then one of these; ONNX's ModelProto uses 1..25 only.
_MODEL_TYPE_FIELDS = frozenset({
    200, 201, 202, 300, 301, 302, 303, 304, 400, 401, 402, 403, 404, 500, 501, 502, 555, 556,
    560, 600, 601, 602, 603, 604, 606, 607, 609, 610, 900, 2000, 2001, 2002, 2003, 2004, 2005,
    2006, 3000,
})
_NN_KINDS = ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor")
_PIPELINE_KINDS = ("pipeline", "pipelineClassifier", "pipelineRegressor")
_WEIGHT_PARAMS = "CoreML.Specification.WeightParams"
_NETWORK_MESSAGE = "CoreML.Specification.NeuralNetwork"
_BLOB_METADATA_BYTES = 64  # MIL blob format: each blob is preceded by a 64-byte metadata record
_SMALL_DATA_LIMIT = 64  # constants with at most this many elements keep their values

_MIL_DTYPES = {
    "BOOL": "bool", "STRING": "string", "FLOAT8E4M3FN": "float8e4m3fn", "FLOAT8E5M2": "float8e5m2",
    "FLOAT16": "float16", "FLOAT32": "float32", "FLOAT64": "float64", "BFLOAT16": "bfloat16",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "INT4": "int4",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "UINT4": "uint4",
    "UINT2": "uint2", "UINT1": "uint1", "UINT6": "uint6", "UINT3": "uint3",
}
_ARRAY_DTYPES = {"FLOAT32": "float32", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8",
                 "FLOAT16": "float16"}
# MIL opset of a function -> the coremltools deployment target whose op definitions apply.
_OPSET_TARGETS = {"CoreML3": "iOS13", "CoreML4": "iOS14", "CoreML5": "iOS15", "CoreML6": "iOS16",
                  "CoreML7": "iOS17", "CoreML8": "iOS18"}

# NeuralNetwork layers whose output has the shape of their first input.
_NN_SAME_SHAPE = frozenset({
    "activation", "batchnorm", "mvn", "l2normalize", "softmax", "lrn", "unary", "scale", "bias",
    "copy", "clip", "ceil", "floor", "sign", "round", "exp2", "sin", "cos", "tan", "asin", "acos",
    "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "gelu", "logicalNot",
    "softmaxND", "layerNormalization", "clampedReLU", "cumSum", "reverse", "reverseSeq",
    "fillLike", "randomNormalLike", "randomUniformLike", "randomBernoulliLike",
    "lowerTriangular", "upperTriangular", "matrixBandPart",
})
_NN_ELEMENTWISE = frozenset({"add", "multiply", "average", "max", "min"})
_NN_BROADCASTABLE = frozenset({
    "addBroadcastable", "subtractBroadcastable", "multiplyBroadcastable", "divideBroadcastable",
    "floorDivBroadcastable", "modBroadcastable", "powBroadcastable", "minBroadcastable",
    "maxBroadcastable", "equal", "notEqual", "lessThan", "lessEqual", "greaterThan",
    "greaterEqual", "logicalOr", "logicalXor", "logicalAnd", "whereBroadcastable",
})


# --------------------------------------------------------------------------- sniff

def sniff(path: Path) -> bool:
    """True for an .mlpackage directory or a file whose first protobuf fields are a Core ML `Model`."""
    try:
        path = Path(path)
        if path.is_dir():
            return (path / "Manifest.json").is_file()
        if not path.is_file():
            return False
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return _looks_like_coreml_spec(handle, size)
    except Exception:  # sniffing must never fail: any problem means "not mine"
        return False


def _read_varint(handle) -> Optional[int]:
    result = 0
    shift = 0
    while shift <= 63:
        byte = handle.read(1)
        if not byte:
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
    return None


def _looks_like_coreml_spec(handle, size: int) -> bool:
    seen_version = False
    for _ in range(8):
        tag = _read_varint(handle)
        if tag is None:
            return False
        number, wire_type = tag >> 3, tag & 7
        if number in (1, 10) and wire_type == 0:
            value = _read_varint(handle)
            if value is None:
                return False
            seen_version = seen_version or (number == 1 and 0 < value < 1000)
        elif number == 2 and wire_type == 2:  # description: must fit in the file
            length = _read_varint(handle)
            if length is None or handle.tell() + length > size:
                return False
            handle.seek(length, os.SEEK_CUR)
        elif number in _MODEL_TYPE_FIELDS and wire_type == 2:
            # The model itself; it may be truncated, load() says so.
            return seen_version
        else:
            return False
    return False


# --------------------------------------------------------------------------- load

def load(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Model:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(str(path), "no such file or directory")
    if path.is_dir():
        spec_path, weights_dir = _resolve_package(path)
    else:
        spec_path, weights_dir = path, None
    spec = _parse_spec(path, spec_path)
    try:
        loader = _Loader(path, spec_path.parent, weights_dir, input_shapes or {})
        return loader.build_model(spec)
    except ModelLoadError:
        raise
    except MemoryError:
        raise ModelLoadError(str(path), "not enough memory to open this model") from None
    except Exception as exc:  # a damaged spec that parsed but makes no sense: name it, no traceback
        raise ModelLoadError(str(path), f"could not be read as a Core ML model: "
                                        f"{type(exc).__name__}: {exc}") from exc


def _model_pb2():
    """coremltools' protobuf module, imported on first use (importing coremltools takes ~1 s)."""
    # On Linux coremltools logs "Failed to load _MLModelProxy" warnings on import: prediction
    # is macOS-only, which LayerScope already knows; keep them out of the user's console.
    ct_logger = logging.getLogger("coremltools")
    previous = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        from coremltools.proto import Model_pb2
    finally:
        ct_logger.setLevel(previous)
    return Model_pb2


def _resolve_package(package: Path) -> tuple[Path, Optional[Path]]:
    """The spec file and weights directory of an .mlpackage, from its Manifest.json."""
    manifest_path = package / "Manifest.json"
    if not manifest_path.is_file():
        raise ModelLoadError(str(package), "is a directory, not an .mlpackage (no Manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(str(package), f"Manifest.json cannot be read ({exc}): the package is "
                                           "damaged; re-save it with coremltools") from None
    data_dir = package / "Data"
    entries = manifest.get("itemInfoEntries") if isinstance(manifest, dict) else None
    entries = entries if isinstance(entries, dict) else {}
    spec_path: Optional[Path] = None
    root = entries.get(manifest.get("rootModelIdentifier")) if isinstance(manifest, dict) else None
    if isinstance(root, dict) and isinstance(root.get("path"), str):
        spec_path = data_dir / root["path"]
    elif (data_dir / "com.apple.CoreML" / "model.mlmodel").is_file():
        spec_path = data_dir / "com.apple.CoreML" / "model.mlmodel"
    if spec_path is None:
        raise ModelLoadError(str(package), "Manifest.json names no root model "
                                           "(rootModelIdentifier): the package is damaged")
    if not spec_path.is_file():
        raise ModelLoadError(str(package), f"model file {_relative(spec_path, package)} named in "
                                           "Manifest.json is missing: the package is incomplete")
    weights_dir = None
    for entry in entries.values():
        if isinstance(entry, dict) and entry.get("name") == "weights" and isinstance(entry.get("path"), str):
            weights_dir = data_dir / entry["path"]
    return spec_path, weights_dir


def _parse_spec(source: Path, spec_path: Path):
    try:
        data = spec_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(str(source), f"cannot be read: {exc.strerror or exc}") from None
    if not data:
        raise ModelLoadError(str(source), "is empty (0 bytes): not a Core ML model")
    model_pb2 = _model_pb2()
    spec = model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        # The parser's words ("Wire format was corrupt") come last, as the cause.
        with open(spec_path, "rb") as handle:
            starts_as_coreml = _looks_like_coreml_spec(handle, len(data))
        problem = (f"truncated or damaged Core ML model: it starts as one, but its content does not parse ({exc})"
                   if starts_as_coreml else not_a_model("a Core ML", content_kind(data[:512]), exc))
        raise ModelLoadError(str(source), problem) from None
    if spec.WhichOneof("Type") is None:
        raise ModelLoadError(str(source), "does not contain a Core ML model (no model type in the "
                                          "spec): the file is damaged or not a Core ML file")
    return spec


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _unique(base: str, used: set[str]) -> str:
    candidate = base
    k = 1
    while candidate in used:
        candidate = f"{base}_{k}"
        k += 1
    used.add(candidate)
    return candidate


def _known(shape: Optional[tuple]) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


# --------------------------------------------------------------------------- the loader

class _Loader:
    def __init__(self, source: Path, model_dir: Path, weights_dir: Optional[Path],
                 input_shapes: Mapping[str, Sequence[int]]):
        self.source = source
        self.model_dir = model_dir  # what "@model_path" in blob file names refers to
        self.weights_dir = weights_dir
        self.input_shapes = {k: tuple(v) for k, v in input_shapes.items()}
        self.warnings: list[str] = []
        self._blob_extent: dict[Path, int] = {}  # weight file -> bytes the spec expects it to hold
        self._op_orders: dict[tuple[str, str], Optional[list[str]]] = {}

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    # ---- model level

    def build_model(self, spec) -> Model:
        kind = spec.WhichOneof("Type")
        graphs = self.graphs_for(spec, "main", top=True)
        self._check_blob_files()
        if kind in _NN_KINDS:
            fmt = "coreml-neuralnetwork"
        elif kind == "mlProgram":
            fmt = "coreml-mlprogram"
        elif kind in _PIPELINE_KINDS:
            fmt = "coreml-pipeline"
        else:
            fmt = f"coreml-{kind}"
        producer, metadata = _describe(spec)
        used_inputs = {name for g in graphs for name in g.inputs}
        for name in self.input_shapes:
            if name not in used_inputs:
                self.warn(f"input_shapes names '{name}', which is not an input of this model "
                          f"(inputs: {', '.join(sorted(used_inputs)) or 'none'})")
        return Model(format=fmt, producer=producer, graphs=tuple(graphs), metadata=metadata,
                     path=str(self.source), warnings=tuple(self.warnings))

    def graphs_for(self, spec, name: str, top: bool = False) -> list[Graph]:
        kind = spec.WhichOneof("Type")
        if kind in _NN_KINDS:
            return [self.nn_graph(spec, getattr(spec, kind), name)]
        if kind == "mlProgram":
            return [self.mil_graph(spec, name)]
        if kind in _PIPELINE_KINDS:
            pipeline = spec.pipeline if kind == "pipeline" else getattr(spec, kind).pipeline
            graphs: list[Graph] = []
            used: set[str] = set()
            for index, sub in enumerate(pipeline.models):
                sub_name = pipeline.names[index] if index < len(pipeline.names) else ""
                sub_name = sub_name or f"{index}_{sub.WhichOneof('Type') or 'empty'}"
                full = sub_name if top else f"{name}/{sub_name}"
                if sub.WhichOneof("Type") is None:
                    self.warn(f"pipeline model {full} is empty (no model type); it is left out")
                    continue
                for graph in self.graphs_for(sub, _unique(full, used)):
                    graphs.append(graph)
            if not graphs:
                self.warn("the pipeline holds no models")
                return [self.opaque_graph(spec, kind, name)]
            return graphs
        return [self.opaque_graph(spec, kind, name)]

    def opaque_graph(self, spec, kind: str, name: str) -> Graph:
        self.warn(f"{kind} models are not neural networks: shown as one '{kind}' node without "
                  "layers (LayerScope profiles neural networks and ML Programs)")
        values: dict[str, Value] = {}
        inputs, outputs = [], []
        for feature in spec.description.input:
            values[feature.name] = Value(feature.name, self._feature_type(feature, None))
            inputs.append(feature.name)
        for feature in spec.description.output:
            if feature.name not in values:
                values[feature.name] = Value(feature.name, self._feature_type(feature, None))
            outputs.append(feature.name)
        node = Node(id=kind, op_type=kind, name=kind, inputs=tuple(inputs), outputs=tuple(outputs),
                    attributes={"model_type": kind})
        return Graph(name=name, inputs=tuple(inputs), outputs=tuple(outputs), nodes=(node,),
                     values=values)

    # ---- description features

    def _feature_type(self, feature, nn_exact: Optional[bool]) -> Optional[TensorType]:
        """Type of a model input/output.  nn_exact: None outside NN models, else the array mapping."""
        ftype = feature.type
        which = ftype.WhichOneof("Type")
        given = self.input_shapes.get(feature.name)
        if which == "multiArrayType":
            array = ftype.multiArrayType
            dtype = _ARRAY_DTYPES.get(_enum_name(array, "dataType"), "float32")
            shape: Optional[tuple] = tuple(int(d) for d in array.shape) or None
            if shape is None:
                flex = array.WhichOneof("ShapeFlexibility")
                if flex == "enumeratedShapes" and array.enumeratedShapes.shapes:
                    shape = tuple(int(d) for d in array.enumeratedShapes.shapes[0].shape)
                elif flex == "shapeRange" and array.shapeRange.sizeRanges:
                    shape = tuple(int(r.lowerBound) if r.lowerBound == r.upperBound else None
                                  for r in array.shapeRange.sizeRanges)
            if given is not None:
                shape = given
            if nn_exact is False and shape is not None:
                shape = _rank5_presentation(shape)
            return TensorType(dtype, shape)
        if which == "imageType":
            image = ftype.imageType
            space = _enum_name(image, "colorSpace")
            channels = 1 if space in ("GRAYSCALE", "GRAYSCALE_FLOAT16") else 3
            dtype = "float16" if space == "GRAYSCALE_FLOAT16" else "uint8"
            height, width = int(image.height), int(image.width)
            if not (height and width):
                flex = image.WhichOneof("SizeFlexibility")
                if flex == "enumeratedSizes" and image.enumeratedSizes.sizes:
                    height = int(image.enumeratedSizes.sizes[0].height)
                    width = int(image.enumeratedSizes.sizes[0].width)
            shape = (1, channels, height or None, width or None)
            if given is not None:
                if len(given) == 2:
                    shape = (1, channels) + tuple(given)
                elif len(given) == 3:
                    shape = (1,) + tuple(given)
                else:
                    shape = tuple(given)
            return TensorType(dtype, shape)
        if which == "int64Type":
            return TensorType("int64", (1,))
        if which == "doubleType":
            return TensorType("float64", (1,))
        if which == "stringType":
            return TensorType("string", ())
        if which == "stateType" and ftype.stateType.WhichOneof("Type") == "arrayType":
            array = ftype.stateType.arrayType
            return TensorType(_ARRAY_DTYPES.get(_enum_name(array, "dataType"), "float32"),
                              tuple(int(d) for d in array.shape) or None)
        return None  # dictionaries and sequences are not tensors

    # ---- NeuralNetwork

    def nn_graph(self, spec, network, name: str) -> Graph:
        exact = int(network.arrayInputShapeMapping) == 1  # EXACT_ARRAY_MAPPING: N-d tensors
        values: dict[str, Value] = {}
        inputs = []
        for feature in spec.description.input:
            ftype = self._feature_type(feature, exact)
            values[feature.name] = Value(feature.name, ftype)
            inputs.append(feature.name)
            if ftype is None or not _known(ftype.shape):
                self.warn(f"input '{feature.name}' has no fixed shape: pass input_shapes to get "
                          "shapes, sizes and costs of the layers")
        state = _NNState(values, exact)
        nodes = self._nn_layers(network.layers, state, name)
        activation_dtype = "float16" if state.weight_dtypes and state.weight_dtypes <= {"float16"} else "float32"
        for value_name, shape in state.shapes.items():
            if value_name not in values:
                values[value_name] = Value(value_name, TensorType(activation_dtype, shape))
        for node in nodes:  # values of nested networks and outputs without shapes
            for value_name in node.outputs:
                if value_name not in values:
                    values[value_name] = Value(value_name, TensorType(activation_dtype, None))
        values.update(state.constants)
        for node in nodes:  # blobs no layer produces (a damaged spec): keep the edges, no type
            for value_name in node.inputs:
                if value_name and value_name not in values:
                    values[value_name] = Value(value_name)
        outputs = []
        for feature in spec.description.output:
            current = state.current.get(feature.name, feature.name)
            if current in values and current not in state.constants:
                outputs.append(current)
        return Graph(name=name, inputs=tuple(inputs), outputs=tuple(outputs), nodes=tuple(nodes),
                     values=values)

    def _nn_layers(self, layers, state: "_NNState", scope: str) -> list[Node]:
        nodes: list[Node] = []
        for index, layer in enumerate(layers):
            kind = layer.WhichOneof("layer")
            params = getattr(layer, kind) if kind else None
            node_id = _unique(layer.name or f"{kind or 'layer'}_{index}", state.node_ids)
            if kind is None:
                self.warn(f"layer '{node_id}' has no layer type set (newer Core ML than coremltools "
                          "knows?); shown as 'unknown' without shapes")
            op_type = kind or "unknown"
            if kind == "convolution" and params.isDeconvolution:
                op_type = "deconvolution"
            data_inputs = [state.current.get(n, n) for n in layer.input]
            in_shapes = [state.shapes.get(n, _value_shape(state.values.get(n))) for n in data_inputs]
            attrs: dict[str, Any] = _scalar_fields(params) if params is not None else {}
            weight_names = []
            if params is not None:
                weight_names = self._nn_weights(node_id, kind, params, state)
            try:
                out_shapes = _nn_infer(kind, params, in_shapes, attrs, state.exact, len(layer.output))
            except (ArithmeticError, ValueError, IndexError, TypeError):
                out_shapes = []
            declared = _declared_shapes(layer, state.exact)
            outputs = []
            for k, out in enumerate(layer.output):
                value_name = out
                if out in state.shapes or out in state.values or out in state.constants:
                    # Core ML allows writing a blob again (copy layers in loops); keep the IR in SSA
                    # form by versioning the name: later readers see the newest version.
                    value_name = _unique(f"{out}:1", state.value_names)
                state.value_names.add(value_name)
                state.current[out] = value_name
                shape = declared[k] if k < len(declared) and declared[k] is not None else (
                    out_shapes[k] if k < len(out_shapes) else None)
                state.shapes[value_name] = shape
                outputs.append(value_name)
            subgraphs = {}
            if kind in ("branch", "loop"):
                for field_name in (("ifBranch", "elseBranch") if kind == "branch"
                                   else ("conditionNetwork", "bodyNetwork")):
                    if params.HasField(field_name):
                        sub_nodes = self._nn_layers(getattr(params, field_name).layers, state,
                                                    f"{node_id}/{field_name}")
                        sub_values = {out: Value(out) for n in sub_nodes for out in n.outputs}
                        sub_values.update({w: state.constants[w] for n in sub_nodes
                                           for w in n.inputs if w in state.constants})
                        subgraphs[field_name] = Graph(name=f"{node_id}/{field_name}", inputs=(),
                                                      outputs=(), nodes=tuple(sub_nodes),
                                                      values=sub_values)
            nodes.append(Node(id=node_id, op_type=op_type, name=layer.name,
                              inputs=tuple(data_inputs) + tuple(weight_names),
                              outputs=tuple(outputs), attributes=attrs, subgraphs=subgraphs))
        return nodes

    def _nn_weights(self, node_id: str, kind: str, params, state: "_NNState") -> list[str]:
        """Constant Values for every WeightParams of the layer, in spec field order."""
        found: list[tuple[list[str], Any]] = []
        _collect_weights(params, [], found, depth=0)
        if not found:
            return []
        leaves = [path[-1] for path, _ in found]
        expected = _nn_weight_shapes(kind, params)
        names = []
        for path, weight in found:
            described = _describe_weight(weight)
            if described is None:
                continue  # an unset optional weight (hasBias false)
            dtype, count, nbytes = described
            leaf = path[-1]
            label = "weight" if leaf == "weights" else leaf
            if leaves.count(leaf) > 1:
                label = "/".join(path[:-1] + [label])
            shape: Optional[tuple] = expected.get(leaf) if len(path) == 1 else None
            if count is None:
                shape = None
            elif shape is None or math.prod(shape) != count:
                shape = (count,)
            if dtype in FLOAT_DTYPES:
                state.weight_dtypes.add(dtype)
            value_name = _unique(f"{node_id}/{label}", state.value_names)
            state.constants[value_name] = Value(
                value_name, TensorType(dtype, shape),
                Initializer(TensorType(dtype, shape), WeightLocation("inline", length=nbytes)))
            names.append(value_name)
        return names

    # ---- ML Program

    def mil_graph(self, spec, name: str) -> Graph:
        program = spec.mlProgram
        function_name = spec.description.defaultFunctionName or "main"
        if function_name not in program.functions:
            if not program.functions:
                raise ModelLoadError(str(self.source), "the ML Program has no functions")
            chosen = sorted(program.functions)[0]
            self.warn(f"the ML Program has no '{function_name}' function; showing '{chosen}'")
            function_name = chosen
        function = program.functions[function_name]
        if function.opset in function.block_specializations:
            opset = function.opset
        elif function.block_specializations:
            opset = sorted(function.block_specializations)[-1]
            self.warn(f"function '{function_name}' has no block for its opset {function.opset}; "
                      f"showing the {opset} block")
        else:
            raise ModelLoadError(str(self.source), f"ML Program function '{function_name}' has no body")
        block = function.block_specializations[opset]
        values: dict[str, Value] = {}
        inputs = []
        for named in function.inputs:
            vtype = _mil_type(named.type)
            given = self.input_shapes.get(named.name)
            if given is not None:
                vtype = TensorType(vtype.dtype if vtype else "float32", tuple(given))
            values[named.name] = Value(named.name, vtype)
            inputs.append(named.name)
            if vtype is None or not _known(vtype.shape):
                self.warn(f"input '{named.name}' has no fixed shape: pass input_shapes to get "
                          "sizes and costs of the first layers")
        context = _MILContext(opset=opset, constants={}, node_ids=set())
        nodes = self._mil_block(block, values, context, name)
        return Graph(name=name, inputs=tuple(inputs), outputs=tuple(block.outputs),
                     nodes=tuple(nodes), values=values)

    def _mil_block(self, block, values: dict[str, Value], context: "_MILContext",
                   scope: str) -> list[Node]:
        nodes: list[Node] = []
        for index, op in enumerate(block.operations):
            if op.type == "const":
                self._mil_const(op, values, context)
                continue
            if op.type.startswith("constexpr_") and self._mil_constexpr(op, values, context):
                continue
            first = op.outputs[0].name if op.outputs else f"{op.type}_{index}"
            node_id = _unique(first, context.node_ids)
            inputs: list[str] = []
            input_names: list[str] = []
            attrs: dict[str, Any] = {}
            for param in self._op_param_order(op.type, context.opset, list(op.inputs.keys())):
                bindings = op.inputs[param].arguments
                for j, binding in enumerate(bindings):
                    if binding.WhichOneof("binding") == "value":
                        # An immediate argument: give it a constant Value of its own.
                        suffix = f"{param}_{j}" if len(bindings) > 1 else param
                        value_name = _unique_value(f"{node_id}/{suffix}", values, context)
                        value = self._mil_constant_value(value_name, binding.value, None)
                        values[value_name] = value
                        context.constants[value_name] = value
                    else:
                        value_name = binding.name
                    inputs.append(value_name)
                    input_names.append(param)
                if len(bindings) == 1:
                    constant = context.constants.get(inputs[-1])
                    if constant is not None and constant.small_data is not None:
                        # Arguments (strides, axes, pad_type, epsilon) become attributes; small
                        # float tensors (a bias of 4 values) are weights, not arguments.
                        data = constant.small_data
                        scalar = constant.type is not None and constant.type.shape == ()
                        if scalar or constant.type is None or constant.type.dtype not in FLOAT_DTYPES:
                            attrs[param] = data[0] if scalar and len(data) == 1 else list(data)
            attrs["input_names"] = tuple(input_names)
            for value_name in inputs:  # constants of an enclosing block, seen from a nested one
                if value_name not in values and value_name in context.constants:
                    values[value_name] = context.constants[value_name]
            outputs = []
            for out in op.outputs:
                values[out.name] = Value(out.name, _mil_type(out.type))
                outputs.append(out.name)
            _mil_onnx_attributes(op.type, attrs, inputs, input_names, outputs, values, context)
            name_attr = op.attributes.get("name") if "name" in op.attributes else None
            node_name = first
            if name_attr is not None and name_attr.immediateValue.tensor.strings.values:
                node_name = name_attr.immediateValue.tensor.strings.values[0]
            subgraphs = {}
            for k, sub_block in enumerate(op.blocks):
                sub_values: dict[str, Value] = {}
                for named in sub_block.inputs:
                    sub_values[named.name] = Value(named.name, _mil_type(named.type))
                sub_nodes = self._mil_block(sub_block, sub_values, context, f"{node_id}/block{k}")
                for value_name in sub_block.outputs:
                    if value_name in context.constants and value_name not in sub_values:
                        sub_values[value_name] = context.constants[value_name]
                subgraphs[f"block{k}"] = Graph(
                    name=f"{node_id}/block{k}", inputs=tuple(n.name for n in sub_block.inputs),
                    outputs=tuple(sub_block.outputs), nodes=tuple(sub_nodes), values=sub_values)
            nodes.append(Node(id=node_id, op_type=op.type, name=node_name, inputs=tuple(inputs),
                              outputs=tuple(outputs), attributes=attrs, subgraphs=subgraphs))
        return nodes

    def _mil_const(self, op, values: dict[str, Value], context: "_MILContext") -> None:
        if not op.outputs:
            return
        out = op.outputs[0]
        declared = _mil_type(out.type)
        if "val" not in op.attributes:
            value = Value(out.name, declared)
        else:
            value = self._mil_constant_value(out.name, op.attributes["val"], declared)
        values[out.name] = value
        context.constants[out.name] = value

    def _mil_constant_value(self, name: str, mil_value, declared: Optional[TensorType]) -> Value:
        vtype = declared or _mil_type(mil_value.type)
        nbytes = vtype.byte_size if vtype is not None and vtype.byte_size is not None else 0
        which = mil_value.WhichOneof("value")
        small = None
        if which == "blobFileValue":
            blob = mil_value.blobFileValue
            file_path = self._resolve_blob(blob.fileName)
            offset = int(blob.offset)
            self._blob_extent[file_path] = max(self._blob_extent.get(file_path, 0),
                                               offset + _BLOB_METADATA_BYTES + nbytes)
            location = WeightLocation("blob", path=str(file_path.absolute()), offset=offset,
                                      length=nbytes)
        else:
            location = WeightLocation("inline", length=nbytes)
            if which == "immediateValue" and mil_value.immediateValue.WhichOneof("value") == "tensor":
                small = _tensor_small_data(mil_value.immediateValue.tensor, vtype)
        initializer = Initializer(vtype, location) if vtype is not None else None
        return Value(name, vtype, initializer, small)

    def _mil_constexpr(self, op, values: dict[str, Value], context: "_MILContext") -> bool:
        """Fold a constexpr_* op (decompression at load time) into constant outputs."""
        sources = []
        for argument in op.inputs.values():
            for binding in argument.arguments:
                if binding.WhichOneof("binding") == "name":
                    constant = context.constants.get(binding.name)
                    if constant is None:
                        return False  # reads a runtime tensor: keep it as a node
                    sources.append(constant)
        for key, attribute in op.attributes.items():  # iOS16 constexpr ops hold their data here
            if key != "name":
                sources.append(self._mil_constant_value(key, attribute, None))
        blobs = [c.initializer.location for c in sources
                 if c.initializer is not None and c.initializer.location.kind == "blob"]
        # Where the compressed data lives: the largest blob read (the indices or quantized
        # values), else the inputs kept inline in the spec.  The Initializer's type is the
        # decompressed tensor, so its byte_size is what Core ML holds in memory at run time.
        stored = max(blobs, key=lambda loc: loc.length) if blobs else WeightLocation(
            "inline", length=sum(c.initializer.byte_size for c in sources if c.initializer))
        for out in op.outputs:
            vtype = _mil_type(out.type)
            if vtype is None:
                values[out.name] = Value(out.name)
            else:
                location = stored
                values[out.name] = Value(out.name, vtype, Initializer(vtype, location))
            context.constants[out.name] = values[out.name]
        return True

    def _op_param_order(self, op_type: str, opset: str, keys: list[str]) -> list[str]:
        """Parameters in the op definition's order (x, weight, bias, ...): protobuf maps have none."""
        cache_key = (op_type, opset)
        if cache_key not in self._op_orders:
            self._op_orders[cache_key] = _registry_param_order(op_type, opset)
        canonical = self._op_orders[cache_key] or []
        ordered = [k for k in canonical if k in keys]
        rest = [k for k in keys if k not in ordered]
        preferred = ["x", "values", "y", "weight", "bias"]
        rest.sort(key=lambda k: (preferred.index(k) if k in preferred else len(preferred), k))
        ordered += rest
        if "x" in ordered and ordered[0] != "x":
            # The data input first, as in ONNX (a few definitions, e.g. avg_pool, start with a flag).
            ordered.remove("x")
            ordered.insert(0, "x")
        return ordered

    def _resolve_blob(self, file_name: str) -> Path:
        relative = file_name
        if relative.startswith("@model_path/"):
            relative = relative[len("@model_path/"):]
        if self.weights_dir is not None and relative.startswith("weights/"):
            return self.weights_dir / relative[len("weights/"):]
        return self.model_dir / relative

    def _check_blob_files(self) -> None:
        for file_path, extent in self._blob_extent.items():
            shown = _relative(file_path, self.source) if self.source.is_dir() else str(file_path)
            if not file_path.is_file():
                raise ModelLoadError(str(self.source), f"weights file {shown} is missing: an ML Program "
                                                       "keeps its weights beside the spec; copy or open "
                                                       "the whole .mlpackage")
            size = file_path.stat().st_size
            if size < extent:
                self.warn(f"weights file {shown} holds {size} bytes but the model refers to "
                          f"{extent}: it is truncated; running the model will fail")


class _NNState:
    """Shapes and names while walking NeuralNetwork layers (shared with nested networks)."""

    def __init__(self, values: dict[str, Value], exact: bool):
        self.values = values
        self.exact = exact
        self.shapes: dict[str, Optional[tuple]] = {}
        self.current: dict[str, str] = {}  # blob name -> newest SSA value name
        self.constants: dict[str, Value] = {}
        self.node_ids: set[str] = set()
        self.value_names: set[str] = set(values)
        self.weight_dtypes: set[str] = set()


class _MILContext:
    def __init__(self, opset: str, constants: dict[str, Value], node_ids: set[str]):
        self.opset = opset
        self.constants = constants
        self.node_ids = node_ids


def _unique_value(base: str, values: Mapping[str, Value], context: _MILContext) -> str:
    candidate = base
    k = 1
    while candidate in values or candidate in context.constants:
        candidate = f"{base}_{k}"
        k += 1
    return candidate


def _value_shape(value: Optional[Value]) -> Optional[tuple]:
    return value.type.shape if value is not None and value.type is not None else None


def _enum_name(message, field: str) -> str:
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    number = getattr(message, field)
    value = descriptor.values_by_number.get(number)
    return value.name if value is not None else str(number)


def _describe(spec) -> tuple[str, dict[str, str]]:
    meta = spec.description.metadata
    user = dict(meta.userDefined)
    metadata: dict[str, str] = {"specificationVersion": str(spec.specificationVersion),
                                "modelType": spec.WhichOneof("Type") or ""}
    for key, text in (("shortDescription", meta.shortDescription), ("author", meta.author),
                      ("license", meta.license), ("version", meta.versionString)):
        if text:
            metadata[key] = text
    for key, text in user.items():
        metadata[key] = text
    if spec.WhichOneof("Type") == "mlProgram":
        functions = sorted(spec.mlProgram.functions)
        metadata["functions"] = ", ".join(functions)
        default = spec.description.defaultFunctionName or "main"
        if default in spec.mlProgram.functions:
            metadata["opset"] = spec.mlProgram.functions[default].opset
    tools = user.get("com.github.apple.coremltools.version")
    producer = f"coremltools {tools}" if tools else (meta.author or "")
    return producer, metadata


# --------------------------------------------------------------------------- NN helpers

def _rank5_presentation(shape: tuple) -> Optional[tuple]:
    """A legacy NN array shape (C), (C,H,W) or (Seq,B,C,H,W) as [1,C,H,W]."""
    if len(shape) == 1:
        return (1, shape[0], 1, 1)
    if len(shape) == 3:
        return (1,) + tuple(shape)
    if len(shape) == 4:
        return tuple(shape)  # already [N,C,H,W] (input_shapes given that way)
    if len(shape) == 5:
        return (1,) + tuple(shape[2:])
    return None


def _declared_shapes(layer, exact: bool) -> list[Optional[tuple]]:
    """Shapes the converter wrote into layer.outputTensor (ND models), else nothing."""
    shapes: list[Optional[tuple]] = []
    for tensor in layer.outputTensor:
        dims = [int(d) for d in tensor.dimValue]
        if not dims or (tensor.rank and len(dims) != tensor.rank):
            shapes.append(None)
            continue
        shape = tuple(d if d > 0 else None for d in dims)
        if not exact:
            shape = _rank5_presentation(shape) if len(shape) != 4 else shape
        shapes.append(shape)
    return shapes


def _scalar_fields(params) -> dict[str, Any]:
    """Cheap attributes: the layer's scalar and repeated-scalar fields, enums by name."""
    attrs: dict[str, Any] = {}
    for field, value in params.ListFields():
        if field.message_type is not None or field.type == field.TYPE_BYTES:
            continue
        if field.enum_type is not None:
            if _is_repeated(field):
                attrs[field.name] = [field.enum_type.values_by_number[v].name
                                     if v in field.enum_type.values_by_number else v for v in value]
            else:
                enum_value = field.enum_type.values_by_number.get(value)
                attrs[field.name] = enum_value.name if enum_value else value
        elif _is_repeated(field):
            attrs[field.name] = list(value)
        else:
            attrs[field.name] = value
    # Enum fields at their default (0) are not "listed"; they still mean something.
    for field in params.DESCRIPTOR.fields:
        if field.enum_type is not None and not _is_repeated(field) and field.name not in attrs:
            enum_value = field.enum_type.values_by_number.get(getattr(params, field.name))
            if enum_value is not None:
                attrs[field.name] = enum_value.name
    return attrs


def _is_repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == field.LABEL_REPEATED  # older protobuf


def _collect_weights(message, path: list[str], found: list, depth: int) -> None:
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        full_name = field.message_type.full_name
        if full_name == _NETWORK_MESSAGE:
            continue  # nested networks (branch/loop) have layers of their own
        items = value if _is_repeated(field) else [value]
        for k, item in enumerate(items):
            label = field.name if len(items) == 1 else f"{field.name}{k}"
            if full_name == _WEIGHT_PARAMS:
                found.append((path + [label], item))
            elif depth < 2:
                _collect_weights(item, path + [label], found, depth + 1)


def _describe_weight(weight) -> Optional[tuple[str, Optional[int], int]]:
    """(dtype, element count, stored bytes) of a WeightParams, None when it holds nothing."""
    if len(weight.floatValue):
        count = len(weight.floatValue)
        return "float32", count, 4 * count
    if weight.float16Value:
        nbytes = len(weight.float16Value)
        return "float16", nbytes // 2, nbytes
    if weight.rawValue and weight.HasField("quantization"):
        bits = int(weight.quantization.numberOfBits) or 8
        nbytes = len(weight.rawValue)
        dtype = {8: "uint8", 4: "uint4"}.get(bits)
        if dtype is None:  # 1..7-bit palettes have no dtype name with a byte size
            return "uint8", None, nbytes
        return dtype, nbytes * 8 // bits, nbytes
    if weight.int8RawValue:
        nbytes = len(weight.int8RawValue)
        return "int8", nbytes, nbytes
    if weight.rawValue:
        nbytes = len(weight.rawValue)
        return "float32", nbytes // 4, nbytes
    return None


def _nn_weight_shapes(kind: str, p) -> dict[str, tuple]:
    """ONNX-layout shapes of a layer's weights; checked against the element count by the caller."""
    if kind == "convolution":
        kh, kw = (list(p.kernelSize) + [3, 3])[:2] if p.kernelSize else (3, 3)
        groups = p.nGroups or 1
        if p.isDeconvolution:
            weight = (p.kernelChannels, p.outputChannels // groups, kh, kw)
        else:
            weight = (p.outputChannels, p.kernelChannels, kh, kw)
        return {"weights": weight, "bias": (p.outputChannels,)}
    if kind == "innerProduct":
        return {"weights": (p.outputChannels, p.inputChannels), "bias": (p.outputChannels,)}
    if kind == "embedding":
        return {"weights": (p.outputChannels, p.inputDim), "bias": (p.outputChannels,)}
    if kind == "embeddingND":
        return {"weights": (p.embeddingSize, p.vocabSize), "bias": (p.embeddingSize,)}
    if kind == "batchedMatmul":
        return {"weights": (p.weightMatrixFirstDimension, p.weightMatrixSecondDimension),
                "bias": (p.weightMatrixSecondDimension,)}
    if kind == "batchnorm":
        c = (p.channels,)
        return {"gamma": c, "beta": c, "mean": c, "variance": c}
    if kind == "scale":
        return {"scale": tuple(p.shapeScale), "bias": tuple(p.shapeBias)}
    if kind == "bias":
        return {"bias": tuple(p.shape)}
    if kind == "loadConstant":
        return {"data": tuple(p.shape)}
    if kind == "loadConstantND":
        return {"data": tuple(p.shape)}
    return {}


def _window_out(size: int, kernel: int, stride: int, dilation: int, padding: str,
                pad_begin: int = 0, pad_end: int = 0, asymmetry: str = "BOTTOM_RIGHT_HEAVY"
                ) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of a convolution/pooling window along one axis."""
    effective = (kernel - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        before = total - total // 2 if asymmetry == "TOP_LEFT_HEAVY" else total // 2
        return out, before, total - before
    return (size + pad_begin + pad_end - effective) // stride + 1, pad_begin, pad_end


def _border(amounts) -> tuple[int, int, int, int]:
    """BorderAmounts [H, W] -> (top, bottom, left, right)."""
    edges = list(amounts.borderAmounts)
    h = edges[0] if len(edges) > 0 else None
    w = edges[1] if len(edges) > 1 else None
    return (h.startEdgeSize if h else 0, h.endEdgeSize if h else 0,
            w.startEdgeSize if w else 0, w.endEdgeSize if w else 0)


def _broadcast(shapes: Sequence[Optional[tuple]]) -> Optional[tuple]:
    if not shapes or not all(_known(s) for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out = [1] * rank
    for shape in shapes:
        padded = (1,) * (rank - len(shape)) + tuple(shape)
        for i, d in enumerate(padded):
            if d != 1:
                if out[i] not in (1, d):
                    return None
                out[i] = d
    return tuple(out)


def _nn_infer(kind: Optional[str], p, ins: list, attrs: dict, exact: bool,
              n_outputs: int) -> list[Optional[tuple]]:
    """Output shapes of a NeuralNetwork layer; fills ONNX-style attributes on the way."""
    x = ins[0] if ins else None
    if kind == "convolution":
        kh, kw = list(p.kernelSize)[:2] if len(p.kernelSize) >= 2 else (3, 3)
        sh, sw = list(p.stride)[:2] if len(p.stride) >= 2 else (1, 1)
        dh, dw = list(p.dilationFactor)[:2] if len(p.dilationFactor) >= 2 else (1, 1)
        attrs.update(kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw],
                     group=p.nGroups or 1)
        padding = p.WhichOneof("ConvolutionPaddingType") or "valid"
        asym = "BOTTOM_RIGHT_HEAVY"
        top = bottom = left = right = 0
        if padding == "valid" and p.valid.HasField("paddingAmounts"):
            top, bottom, left, right = _border(p.valid.paddingAmounts)
        if padding == "same":
            asym = _enum_name(p.same, "asymmetryMode")
        attrs["padding"] = padding
        if padding == "valid":
            attrs["pads"] = [top, left, bottom, right]
        if p.outputShape:
            attrs["output_shape"] = list(p.outputShape)
        if not (_known(x) and len(x) == 4):
            return []
        n, _, h, w = x
        if p.isDeconvolution:
            if len(p.outputShape) >= 2:
                oh, ow = p.outputShape[0], p.outputShape[1]
            elif padding == "same":
                oh, ow = h * sh, w * sw
            else:
                oh = (h - 1) * sh + (kh - 1) * dh + 1 - top - bottom
                ow = (w - 1) * sw + (kw - 1) * dw + 1 - left - right
            if padding == "same":
                th = max((h - 1) * sh + (kh - 1) * dh + 1 - oh, 0)
                tw = max((w - 1) * sw + (kw - 1) * dw + 1 - ow, 0)
                attrs["pads"] = [th // 2, tw // 2, th - th // 2, tw - tw // 2]
            return [(n, p.outputChannels, oh, ow)]
        oh, pt, pb = _window_out(h, kh, sh, dh, padding, top, bottom, asym)
        ow, pl, pr = _window_out(w, kw, sw, dw, padding, left, right, asym)
        attrs["pads"] = [pt, pl, pb, pr]
        return [(n, p.outputChannels, oh, ow)]
    if kind == "pooling":
        kh, kw = list(p.kernelSize)[:2] if len(p.kernelSize) >= 2 else (3, 3)
        sh, sw = list(p.stride)[:2] if len(p.stride) >= 2 else (1, 1)
        attrs["global"] = bool(p.globalPooling)
        attrs["strides"] = [sh, sw]
        if p.globalPooling:
            if _known(x) and len(x) == 4:
                attrs["kernel_shape"] = [x[2], x[3]]
                return [(x[0], x[1], 1, 1)]
            return []
        attrs["kernel_shape"] = [kh, kw]
        padding = p.WhichOneof("PoolingPaddingType") or "valid"
        attrs["padding"] = padding
        top = bottom = left = right = 0
        if padding == "valid" and p.valid.HasField("paddingAmounts"):
            top, bottom, left, right = _border(p.valid.paddingAmounts)
        if padding == "includeLastPixel":
            pads = (list(p.includeLastPixel.paddingAmounts) + [0, 0])[:2]
            attrs["pads"] = [pads[0], pads[1], pads[0], pads[1]]
        elif padding == "valid":
            attrs["pads"] = [top, left, bottom, right]
        if not (_known(x) and len(x) == 4):
            return []
        n, c, h, w = x
        if padding == "includeLastPixel":
            out = []
            for size, k, s, pad in ((h, kh, sh, pads[0]), (w, kw, sw, pads[1])):
                o = -(-(size + 2 * pad - k) // s) + 1
                if pad and (o - 1) * s >= size + pad:
                    o -= 1
                out.append(o)
            return [(n, c, out[0], out[1])]
        asym = _enum_name(p.same, "asymmetryMode") if padding == "same" else "BOTTOM_RIGHT_HEAVY"
        oh, pt, pb = _window_out(h, kh, sh, 1, padding, top, bottom, asym)
        ow, pl, pr = _window_out(w, kw, sw, 1, padding, left, right, asym)
        attrs["pads"] = [pt, pl, pb, pr]
        return [(n, c, oh, ow)]
    if kind == "activation":
        activation = p.WhichOneof("NonlinearityType")
        attrs["activation"] = activation or "linear"
        if activation:
            for field, value in getattr(p, activation).ListFields():
                if field.message_type is None:
                    attrs[field.name] = value
        return [x]
    if kind is None:
        return []
    if kind in _NN_SAME_SHAPE:
        return [x] * max(n_outputs, 1)
    if kind in _NN_ELEMENTWISE:
        return [_broadcast(ins) if len(ins) > 1 else x]
    if kind in _NN_BROADCASTABLE:
        return [_broadcast(ins)]
    if kind == "innerProduct":
        if exact:
            return [x[:-1] + (p.outputChannels,)] if _known(x) and len(x) >= 1 else []
        return [(x[0] if _known(x) else 1, p.outputChannels, 1, 1)]
    if kind == "embedding":
        return [(x[0] if _known(x) else 1, p.outputChannels, 1, 1)] if not exact else []
    if exact:
        return _nn_infer_nd(kind, p, ins, attrs)
    if not (_known(x) and len(x) == 4):
        if kind == "loadConstant" and len(p.shape) == 3:
            return [(1,) + tuple(p.shape)]
        return []
    n, c, h, w = x
    if kind == "concat":
        if p.sequenceConcat:
            return [x]
        if not all(_known(s) and len(s) == 4 for s in ins):
            return []
        return [(n, sum(s[1] for s in ins), h, w)]
    if kind == "flatten":
        return [(n, c * h * w, 1, 1)]
    if kind == "reshape":
        target = list(p.targetShape)
        if len(target) == 3:
            return [(n,) + tuple(target)]
        if len(target) == 4:
            return [(n,) + tuple(target[1:])]
        return []
    if kind == "permute":
        axes = list(p.axis)
        if sorted(axes) != [0, 1, 2, 3]:
            return []
        full = (1, c, h, w)
        permuted = tuple(full[a] for a in axes)
        return [(n,) + permuted[1:]]
    if kind == "upsample":
        factors = list(p.scalingFactor) or [1, 1]
        fractional = list(p.fractionalScalingFactor)
        attrs["scales"] = fractional or factors
        attrs["mode"] = {"NN": "nearest", "BILINEAR": "bilinear"}.get(_enum_name(p, "mode"), "nearest")
        if fractional:
            return [(n, c, int(h * fractional[0]), int(w * fractional[1]))]
        return [(n, c, h * factors[0], w * factors[1])]
    if kind == "resizeBilinear":
        size = list(p.targetSize) or [1, 1]
        attrs["mode"] = "bilinear"
        return [(n, c, size[0], size[1])]
    if kind == "padding":
        top, bottom, left, right = _border(p.paddingAmounts)
        attrs["pads"] = [top, left, bottom, right]
        return [(n, c, h + top + bottom, w + left + right)]
    if kind == "crop":
        if len(ins) > 1 and _known(ins[1]) and len(ins[1]) == 4:
            return [(n, c, ins[1][2], ins[1][3])]
        top, bottom, left, right = _border(p.cropAmounts)
        return [(n, c, h - top - bottom, w - left - right)]
    if kind == "reorganizeData":
        b = p.blockSize or 1
        if _enum_name(p, "mode") == "SPACE_TO_DEPTH":
            return [(n, c * b * b, h // b, w // b)]
        return [(n, c // (b * b), h * b, w * b)]
    if kind == "split":
        parts = p.nOutputs or n_outputs or 1
        return [(n, c // parts, h, w)] * n_outputs
    if kind == "reduce":
        axis = _enum_name(p, "axis")
        return [{"CHW": (n, 1, 1, 1), "HW": (n, c, 1, 1), "C": (n, 1, h, w),
                 "H": (n, c, 1, w), "W": (n, c, h, 1)}.get(axis)]
    if kind == "dot":
        return [(n, 1, 1, 1)]
    if kind == "slice":
        axis = _enum_name(p, "axis")
        index = {"CHANNEL_AXIS": 1, "HEIGHT_AXIS": 2, "WIDTH_AXIS": 3}[axis]
        size = x[index]
        end = p.endIndex if p.endIndex >= 0 else size + p.endIndex + 1  # -1: up to the end
        length = len(range(p.startIndex, min(end, size), p.stride or 1))
        return [x[:index] + (length,) + x[index + 1:]]
    if kind == "loadConstant" and len(p.shape) == 3:
        return [(n,) + tuple(p.shape)]
    return []


def _nn_infer_nd(kind: str, p, ins: list, attrs: dict) -> list[Optional[tuple]]:
    """Shapes of N-d (EXACT_ARRAY_MAPPING) layers that are easy to follow."""
    x = ins[0] if ins else None
    if kind == "loadConstantND":
        return [tuple(p.shape)]
    if kind == "reshapeStatic":
        return [tuple(p.targetShape)] if all(d > 0 for d in p.targetShape) else []
    if not _known(x):
        return []
    rank = len(x)
    if kind in ("concatND", "concat") and all(_known(s) and len(s) == rank for s in ins):
        if kind == "concat" and (p.sequenceConcat or rank < 3):
            return []
        axis = p.axis % rank if kind == "concatND" else rank - 3  # rank-5 layers: C is dim -3
        return [x[:axis] + (sum(s[axis] for s in ins),) + x[axis + 1:]]
    if kind.startswith("reduce") and kind != "reduce" and hasattr(p, "reduceAll"):
        if p.reduceAll:
            return [(1,) * rank if p.keepDims else (1,)]
        axes = {a % rank for a in p.axes}
        if p.keepDims:
            return [tuple(1 if i in axes else d for i, d in enumerate(x))]
        return [tuple(d for i, d in enumerate(x) if i not in axes) or (1,)]
    if kind in ("argMax", "argMin"):
        axis = p.axis % rank
        if p.removeDim:
            return [tuple(d for i, d in enumerate(x) if i != axis) or (1,)]
        return [x[:axis] + (1,) + x[axis + 1:]]
    if kind == "tile" and len(p.reps) == rank:
        return [tuple(d * r for d, r in zip(x, p.reps))]
    if kind == "splitND":
        axis = p.axis % rank
        sizes = list(p.splitSizes) or [x[axis] // (p.numSplits or 1)] * (p.numSplits or 1)
        return [x[:axis] + (size,) + x[axis + 1:] for size in sizes]
    if kind == "transpose" and sorted(p.axes) == list(range(rank)):
        return [tuple(x[a] for a in p.axes)]
    if kind == "flattenTo2D":
        axis = p.axis % (rank + 1) if rank else 0
        return [(math.prod(x[:axis]), math.prod(x[axis:]))]
    if kind == "expandDims":
        out = list(x)
        for axis in sorted(a % (rank + len(p.axes)) for a in p.axes):
            out.insert(axis, 1)
        return [tuple(out)]
    if kind == "squeeze":
        if p.squeezeAll:
            return [tuple(d for d in x if d != 1)]
        drop = {a % rank for a in p.axes}
        return [tuple(d for i, d in enumerate(x) if i not in drop)]
    if kind == "getShape":
        return [(rank,)]
    if kind == "batchedMatmul" and len(ins) == 1 and p.weightMatrixSecondDimension:
        return [x[:-1] + (int(p.weightMatrixSecondDimension),)]
    if kind == "batchedMatmul" and len(ins) == 2 and _known(ins[1]) and rank >= 2 and len(ins[1]) >= 2:
        a = x[:-2] + ((x[-1], x[-2]) if p.transposeA else x[-2:])
        b = ins[1][:-2] + ((ins[1][-1], ins[1][-2]) if p.transposeB else ins[1][-2:])
        batch = _broadcast([a[:-2], b[:-2]]) if a[:-2] or b[:-2] else ()
        return [tuple(batch or ()) + (a[-2], b[-1])]
    return []


# --------------------------------------------------------------------------- MIL helpers

def _mil_type(value_type) -> Optional[TensorType]:
    which = value_type.WhichOneof("type")
    if which == "stateType":
        return _mil_type(value_type.stateType.wrappedType)
    if which != "tensorType":
        return None  # lists, tuples and dictionaries are not tensors
    tensor = value_type.tensorType
    dtype = _MIL_DTYPES.get(_enum_name(tensor, "dataType"), "float32")
    if tensor.rank < 0:
        return TensorType(dtype, None)
    dims: list = []
    for dim in tensor.dimensions:
        if dim.WhichOneof("dimension") == "constant":
            dims.append(int(dim.constant.size))
        elif dim.unknown.variadic:
            return TensorType(dtype, None)
        else:
            dims.append(None)
    if tensor.rank and len(dims) != tensor.rank:
        return TensorType(dtype, None)
    return TensorType(dtype, tuple(dims))


def _tensor_small_data(tensor, vtype: Optional[TensorType]) -> Optional[tuple]:
    count = vtype.element_count if vtype is not None else None
    if count is None or count > _SMALL_DATA_LIMIT:
        return None
    which = tensor.WhichOneof("value")
    if which in ("floats", "ints", "bools", "strings", "longInts", "doubles"):
        return tuple(getattr(tensor, which).values)
    if which == "bytes" and vtype is not None and tensor.bytes.values:
        raw = tensor.bytes.values  # one `bytes` field despite its name
        import numpy as np
        numpy_dtype = {"float16": np.float16, "int8": np.int8, "uint8": np.uint8,
                       "int16": np.int16, "uint16": np.uint16}.get(vtype.dtype)
        if numpy_dtype is not None and len(raw) == count * np.dtype(numpy_dtype).itemsize:
            return tuple(np.frombuffer(raw, dtype=numpy_dtype).tolist())
    return None


def _registry_param_order(op_type: str, opset: str) -> Optional[list[str]]:
    """Parameter order of a MIL op from coremltools' op definitions, None if unavailable."""
    try:
        from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
        versions = SSAOpRegistry.core_ops.get(op_type)
        if not versions:
            return None
        target = _OPSET_TARGETS.get(opset)
        by_name = {getattr(k, "name", str(k)): cls for k, cls in versions.items()}
        cls = by_name.get(target) if target else None
        if cls is None:
            cls = list(versions.values())[-1]
        return list(cls.input_spec.input_types.keys())
    except Exception:  # an internal coremltools API: any change just means "no order known"
        return None


def _mil_onnx_attributes(op_type: str, attrs: dict, inputs: list, input_names: list,
                         outputs: list, values: Mapping[str, Value], context: _MILContext) -> None:
    """ONNX-style attributes (kernel_shape, strides, pads, group) for conv and pooling ops."""
    def input_type(param: str) -> Optional[TensorType]:
        if param not in input_names:
            return None
        name = inputs[input_names.index(param)]
        value = values.get(name) or context.constants.get(name)
        return value.type if value is not None else None

    if op_type in ("conv", "conv_transpose"):
        weight = input_type("weight")
        if weight is not None and weight.shape is not None and len(weight.shape) >= 3:
            attrs["kernel_shape"] = list(weight.shape[2:])
        attrs["group"] = attrs.get("groups", 1)
    elif op_type in ("max_pool", "avg_pool", "l2_pool"):
        if "kernel_sizes" in attrs:
            attrs["kernel_shape"] = list(attrs["kernel_sizes"])
    else:
        return
    kernel = attrs.get("kernel_shape")
    if not kernel:
        return
    spatial = len(kernel)
    attrs.setdefault("strides", [1] * spatial)
    attrs.setdefault("dilations", [1] * spatial)
    pad_type = attrs.get("pad_type", "valid")
    if pad_type == "custom" and isinstance(attrs.get("pad"), list) and len(attrs["pad"]) == 2 * spatial:
        pad = attrs["pad"]  # MIL: [begin0, end0, begin1, end1]; ONNX: [begin0, begin1, end0, end1]
        attrs["pads"] = list(pad[0::2]) + list(pad[1::2])
    elif pad_type == "valid":
        attrs["pads"] = [0] * (2 * spatial)
    elif op_type != "conv_transpose":  # same / same_lower: from the shapes
        x = input_type("x")
        y = values[outputs[0]].type if outputs and outputs[0] in values else None
        if x is None or y is None or not _known(x.shape) or not _known(y.shape):
            return
        begins, ends = [], []
        for i in range(spatial):
            size, out = x.shape[-spatial + i], y.shape[-spatial + i]
            stride, dilation = attrs["strides"][i], attrs["dilations"][i]
            total = max((out - 1) * stride + (kernel[i] - 1) * dilation + 1 - size, 0)
            begin = total - total // 2 if pad_type == "same_lower" else total // 2
            begins.append(begin)
            ends.append(total - begin)
        attrs["pads"] = begins + ends
