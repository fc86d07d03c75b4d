"""PyTorch `.pt2` importer: torch.export archives (`torch.export.save`) -> engine.ir.Model.

Read without PyTorch and without running anything from the file.  A `.pt2` file is a zip:

    <root>/archive_format                      "pt2"
    <root>/models/model.json                   the serialized ExportedProgram (graph, signature)
    <root>/data/weights/model_weights_config.json   parameter/buffer name -> weight file + metadata
    <root>/data/weights/weight_0 ...           raw tensor bytes (or a pickle when use_pickle is true)
    <root>/data/constants/...                  tensor constants, same scheme
    <root>/data/sample_inputs/model.pt         example inputs, pickled by torch.save

Only the JSON members are read (with zipfile + json).  Nothing is ever unpickled and
torch.export.load is never called: archives can hold pickled entries, and a pickle runs code
when it is loaded.  Weights are described from the program's tensor metadata and located in
the zip (their bytes are not read).  Archives of torch <= 2.5 (one
`serialized_exported_program.json`, weights in a pickled state dict) open the same way, their
weights described but not located.

Each FX node becomes one Node:
- op_type: the ONNX op type whose cost formula applies (aten.convolution -> "Conv",
  aten.linear/addmm -> "Gemm", aten.mm/bmm/matmul -> "MatMul", ...), so the analysis counts
  MACs and parameters; an aten op without a formula keeps its name ("aten.cumsum") and the
  analysis reports its cost as unknown.  attributes["target"] keeps the full target.
- namespace: the module path of the innermost entry of `nn_module_stack` ("layer1.0.conv1" ->
  "layer1/0/conv1"), so the graph folds by module.
- inputs/outputs: tensor arguments (lists flattened); other arguments become attributes.
Shapes and dtypes come from the program's `tensor_values`; a symbolic dimension keeps its
name ("s0") unless `--shape` fixes it.  Runtime assertion nodes (aten._assert_*) are not
layers and are left out.
"""
from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from engine.gc_pause import collector_paused
from engine.ir import Graph, Initializer, Model, ModelLoadError, Node, TensorType, Value, WeightLocation

FORMAT = "pt2"
EXTENSIONS = (".pt2",)

# Refusals that keep a crafted archive from exhausting memory (a zip bomb, a huge JSON).
MAX_JSON_BYTES = 1 << 30          # one program JSON, uncompressed
MAX_CONFIG_BYTES = 64 << 20       # weights/constants config JSON
MAX_ARCHIVE_MEMBERS = 200_000
MAX_COMPRESSION_RATIO = 200       # JSON compresses ~10x; a bomb compresses ~1000x

_PROGRAM_JSON_LEGACY = "serialized_exported_program.json"  # torch <= 2.5 archives
_ZIP_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")          # 30 bytes before a member's name

# torch/_export/serde/schema.py: ScalarType
_DTYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
    8: "float64", 9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16",
    28: "uint16", 29: "float8e4m3fn", 30: "float8e5m2", 31: "float8e4m3fnuz", 32: "float8e5m2fnuz",
    33: "float8e8m0fnu", 34: "uint32", 35: "uint64",
}

# aten op (without overload) -> the ONNX op type whose cost formula applies (engine/analysis/costs.py).
_OP_TYPES = {
    **dict.fromkeys(("convolution", "_convolution", "conv1d", "conv2d", "conv3d"), "Conv"),
    **dict.fromkeys(("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"), "ConvTranspose"),
    **dict.fromkeys(("linear", "addmm"), "Gemm"),
    **dict.fromkeys(("mm", "bmm", "matmul", "baddbmm"), "MatMul"),
    **dict.fromkeys(("relu", "relu_"), "Relu"), "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "Gelu",
    "silu": "Swish", "hardswish": "HardSwish", "hardsigmoid": "HardSigmoid", "leaky_relu": "LeakyRelu",
    "elu": "Elu", "selu": "Selu", "celu": "Celu", "mish": "Mish", "softplus": "Softplus",
    **dict.fromkeys(("hardtanh", "clamp", "clamp_min", "clamp_max", "relu6"), "Clip"),
    **dict.fromkeys(("prelu", "_prelu_kernel"), "PRelu"),
    **dict.fromkeys(("add", "add_"), "Add"), **dict.fromkeys(("sub", "rsub"), "Sub"),
    **dict.fromkeys(("mul", "mul_"), "Mul"), "div": "Div", "pow": "Pow", "exp": "Exp", "log": "Log",
    "sqrt": "Sqrt", "rsqrt": "Sqrt", "reciprocal": "Reciprocal", "neg": "Neg", "abs": "Abs",
    "erf": "Erf", "sin": "Sin", "cos": "Cos", "maximum": "Max", "minimum": "Min", "where": "Where",
    "eq": "Equal", "gt": "Greater", "lt": "Less", "ge": "GreaterOrEqual", "le": "LessOrEqual",
    "logical_not": "Not", "logical_and": "And", "logical_or": "Or", "floor": "Floor", "ceil": "Ceil",
    "round": "Round", "sign": "Sign",
    **dict.fromkeys(("softmax", "_softmax", "_safe_softmax"), "Softmax"),
    **dict.fromkeys(("log_softmax", "_log_softmax"), "LogSoftmax"),
    **dict.fromkeys(("batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                     "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional"),
                    "BatchNormalization"),
    **dict.fromkeys(("layer_norm", "native_layer_norm"), "LayerNormalization"),
    **dict.fromkeys(("group_norm", "native_group_norm"), "GroupNormalization"),
    "instance_norm": "InstanceNormalization",
    **dict.fromkeys(("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
                     "max_pool3d_with_indices"), "MaxPool"),
    **dict.fromkeys(("avg_pool1d", "avg_pool2d", "avg_pool3d"), "AveragePool"),
    "mean": "ReduceMean", "sum": "ReduceSum", "amax": "ReduceMax", "amin": "ReduceMin",
    "argmax": "ArgMax", "argmin": "ArgMin",
    **dict.fromkeys(("view", "reshape", "_unsafe_view", "view_as", "unflatten"), "Reshape"),
    "flatten": "Flatten",
    **dict.fromkeys(("permute", "transpose", "t", "swapaxes"), "Transpose"),
    **dict.fromkeys(("cat", "concat", "stack"), "Concat"),
    **dict.fromkeys(("split", "split_with_sizes", "chunk", "unbind", "tensor_split"), "Split"),
    **dict.fromkeys(("slice", "narrow"), "Slice"),
    **dict.fromkeys(("select", "index_select", "embedding", "index", "gather"), "Gather"),
    "squeeze": "Squeeze", "unsqueeze": "Unsqueeze", **dict.fromkeys(("expand", "expand_as"), "Expand"),
    "repeat": "Tile",
    **dict.fromkeys(("clone", "contiguous", "alias", "detach", "lift_fresh_copy", "dropout",
                     "native_dropout", "copy"), "Identity"),
    **dict.fromkeys(("_to_copy", "to", "type_as"), "Cast"),
    **dict.fromkeys(("constant_pad_nd", "pad", "reflection_pad2d", "replication_pad2d"), "Pad"),
    **dict.fromkeys(("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d"), "Upsample"),
    **dict.fromkeys(("upsample_bilinear2d", "upsample_linear1d", "upsample_trilinear3d",
                     "upsample_bicubic2d"), "Resize"),
    "pixel_shuffle": "DepthToSpace", "pixel_unshuffle": "SpaceToDepth",
    **dict.fromkeys(("full", "zeros", "ones", "empty", "full_like", "zeros_like", "ones_like",
                     "scalar_tensor", "arange"), "ConstantOfShape"),
    "triu": "Trilu", "tril": "Trilu", **dict.fromkeys(("sym_size", "sym_numel", "sym_stride"), "Shape"),
    "topk": "TopK", "cumsum": "CumSum",
}
# Ops whose tensor arguments come in another order than the ONNX op's: bias first in PyTorch.
_REORDERED_INPUTS = {"addmm": (1, 2, 0), "baddbmm": (1, 2, 0)}
_RESIZE_MODES = {"upsample_bilinear2d": "linear", "upsample_linear1d": "linear",
                 "upsample_trilinear3d": "linear", "upsample_bicubic2d": "cubic"}
_TARGET = re.compile(r"^torch\.ops\.(?P<namespace>[A-Za-z_0-9]+)\.(?P<op>[A-Za-z_0-9]+)(\.(?P<overload>\w+))?$")


# ----------------------------------------------------------------------------- sniffing

def sniff(path: Path) -> bool:
    """True for a zip whose members include a torch.export program JSON (names only, no reading)."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return _program_member(archive.namelist()) is not None
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _program_member(names: Sequence[str]) -> Optional[str]:
    """The program JSON of an archive: `<root>/models/model.json` (else the first models/*.json),
    or the legacy `serialized_exported_program.json`."""
    models = [n for n in names if re.fullmatch(r"(?:[^/]+/)?models/[^/]+\.json", n)]
    for name in models:
        if name.endswith("models/model.json"):
            return name
    if models:
        return models[0]
    return next((n for n in names if n.rpartition("/")[2] == _PROGRAM_JSON_LEGACY), None)


# ----------------------------------------------------------------------------- loading

def load(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Model:
    # A 50,000-node program parses into millions of small dicts and lists, which would trigger
    # the cyclic garbage collector again and again (each pass walking them all: 40 % of the open
    # time).  None of them form cycles, so collection waits until the model is built.
    with collector_paused():
        return _load(Path(path), input_shapes)


def _load(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]]) -> Model:
    if path.is_dir():
        raise ModelLoadError(str(path), "is a directory, not a .pt2 archive")
    if path.stat().st_size == 0:
        raise ModelLoadError(str(path), "the file is empty")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(str(path), f"not a .pt2 archive: not a readable zip file ({exc}); "
                                        "the file may be truncated") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ARCHIVE_MEMBERS:
            raise ModelLoadError(str(path), f"refused: the archive lists {len(infos):,} members "
                                            f"(limit {MAX_ARCHIVE_MEMBERS:,})")
        names = [info.filename for info in infos]
        member = _program_member(names)
        if member is None:
            raise ModelLoadError(str(path), _not_a_program(names))
        program = _read_json(archive, member, MAX_JSON_BYTES, path)
        root = member.rpartition("models/")[0] if member.endswith(".json") and "models/" in member else ""
        model_name = "model" if member.endswith(_PROGRAM_JSON_LEGACY) else member.rpartition("/")[2][: -len(".json")]
        weights = _tensor_files(archive, path, root, "weights", model_name)
        constants = _tensor_files(archive, path, root, "constants", model_name)
    return ProgramBuilder(program, path, weights, constants, dict(input_shapes or {}), model_name).build()


def _not_a_program(names: Sequence[str]) -> str:
    if any(n.rpartition("/")[2] == "data.pkl" for n in names):
        return ("not a torch.export program: this zip is a torch.save checkpoint (a pickle), which "
                "LayerScope never unpickles because loading a pickle runs code; export the model with "
                "torch.export.save to get a .pt2 that can be opened")
    return ("not a torch.export program: the zip has no models/<name>.json (nor "
            f"{_PROGRAM_JSON_LEGACY}); write the file with torch.export.save")


def _read_json(archive: zipfile.ZipFile, member: str, limit: int, path: Path) -> Any:
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise ModelLoadError(str(path), f"refused: {member} is {info.file_size:,} bytes uncompressed "
                                        f"(limit {limit:,})")
    if info.compress_size and info.file_size > 1 << 20 \
            and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
        raise ModelLoadError(str(path), f"refused: {member} expands {info.file_size / info.compress_size:.0f}x "
                                        f"(limit {MAX_COMPRESSION_RATIO}x): a zip bomb, not a program")
    try:
        with archive.open(info) as handle:
            data = handle.read(limit + 1)  # the declared size can lie: never read past the limit
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise ModelLoadError(str(path), f"{member} cannot be read ({exc}); the file may be truncated") from None
    if len(data) > limit:
        raise ModelLoadError(str(path), f"refused: {member} is larger than {limit:,} bytes")
    try:
        return json.loads(data)
    except RecursionError:
        raise ModelLoadError(str(path), f"refused: {member} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelLoadError(str(path), f"{member} is not valid JSON ({exc})") from None


def _tensor_files(archive: zipfile.ZipFile, path: Path, root: str, kind: str,
                  model_name: str) -> dict[str, WeightLocation]:
    """Parameter/buffer/constant name -> where its bytes are, from data/<kind>/<model>_<kind>_config.json.

    A stored (uncompressed) member is located as a slice of the .pt2 file itself; a pickled one
    (use_pickle) is only named: its bytes are never read."""
    config_name = f"{root}data/{kind}/{model_name}_{kind}_config.json"
    try:
        archive.getinfo(config_name)
    except KeyError:
        return {}
    config = _read_json(archive, config_name, MAX_CONFIG_BYTES, path)
    entries = config.get("config", {}) if isinstance(config, dict) else {}
    locations: dict[str, WeightLocation] = {}
    with open(path, "rb") as raw:
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                continue
            member = f"{root}data/{kind}/{entry.get('path_name', '')}"
            try:
                info = archive.getinfo(member)
            except KeyError:
                continue
            if entry.get("use_pickle") or info.compress_type != zipfile.ZIP_STORED:
                locations[name] = WeightLocation("zip-member", f"{path}::{member}", 0, info.file_size)
                continue
            raw.seek(info.header_offset)
            header = raw.read(_ZIP_LOCAL_HEADER.size)
            if len(header) < _ZIP_LOCAL_HEADER.size:
                continue  # truncated: the weight is described, not located
            name_length, extra_length = _ZIP_LOCAL_HEADER.unpack(header)[-2:]
            offset = info.header_offset + _ZIP_LOCAL_HEADER.size + name_length + extra_length
            locations[name] = WeightLocation("embedded", str(path), offset, info.file_size)
    return locations


def _field(container: Any, key: str, path: Path, what: str) -> Any:
    if not isinstance(container, dict) or key not in container:
        raise ModelLoadError(str(path), f"not a valid torch.export program: {what} has no '{key}'")
    return container[key]


class ProgramBuilder:
    """Turns a serialized ExportedProgram (parsed JSON) into the IR."""

    def __init__(self, program: Any, path: Path, weights: dict[str, WeightLocation],
                 constants: dict[str, WeightLocation], input_shapes: dict[str, Sequence[int]],
                 model_name: str):
        self.program = program
        self.path = path
        self.weights = weights
        self.constants = constants
        self.input_shapes = input_shapes
        self.model_name = model_name
        self.warnings: list[str] = []
        self.symbols: dict[str, int] = {}  # symbolic dimension -> size fixed by --shape
        self._namespaces: dict[str, str] = {}
        self._sizes: dict[str, Any] = {}  # size expression text -> int or readable text

    def build(self) -> Model:
        module = _field(self.program, "graph_module", self.path, "the program")
        graph_json = _field(module, "graph", self.path, "graph_module")
        signature = module.get("signature") or {}
        tensor_meta = graph_json.get("tensor_values") or {}
        if not isinstance(tensor_meta, dict):
            raise ModelLoadError(str(self.path), "not a valid torch.export program: tensor_values is not a map")

        user_inputs, constant_names = self._signature_inputs(signature)
        self._fix_symbols(user_inputs, tensor_meta)
        types = {name: self._tensor_type(meta) for name, meta in tensor_meta.items()}
        values: dict[str, Value] = {name: Value(name, t) for name, t in types.items()}
        for name, (kind, original) in constant_names.items():
            tensor_type = types.get(name)
            if tensor_type is None:
                continue
            table = self.weights if kind in ("parameter", "buffer") else self.constants
            location = table.get(original) or WeightLocation("unlocated", str(self.path), 0,
                                                             tensor_type.byte_size or 0)
            values[name] = Value(name, tensor_type, Initializer(tensor_type, location))

        nodes = self._nodes(_field(graph_json, "nodes", self.path, "the graph"), values)
        outputs = tuple(name for spec in signature.get("output_specs", [])
                        for name in _spec_tensor_names(spec, "user_output"))
        if not outputs:
            outputs = tuple(name for arg in graph_json.get("outputs", []) for name in _tensor_names(arg))
        graph = Graph(self.model_name or "main", tuple(user_inputs), outputs, tuple(nodes), values)

        for name in self.input_shapes:
            if name not in graph.inputs:
                raise ModelLoadError(str(self.path), f"--shape names input '{name}', but the program's "
                                                     f"inputs are: {', '.join(graph.inputs)}")
        metadata = {"torch_version": str(self.program.get("torch_version", "")),
                    "schema_version": _schema_version(self.program.get("schema_version")),
                    "opsets": ", ".join(f"{k} {v}" for k, v in (self.program.get("opset_version") or {}).items()),
                    "dialect": ", ".join(str(v) for v in self.program.get("verifiers") or [])}
        return Model(FORMAT, "torch.export", (graph,), {k: v for k, v in metadata.items() if v},
                     str(self.path), tuple(self.warnings))

    # -- signature and shapes -------------------------------------------------------------

    def _signature_inputs(self, signature: Mapping) -> tuple[list[str], dict[str, tuple[str, str]]]:
        """The user inputs' value names, and parameter/buffer/constant value name -> (kind, name
        in the state dict)."""
        user_inputs: list[str] = []
        constants: dict[str, tuple[str, str]] = {}
        for spec in signature.get("input_specs", []):
            if not isinstance(spec, dict) or not spec:
                continue
            kind, body = next(iter(spec.items()))
            if kind == "user_input":
                user_inputs.extend(_tensor_names(body.get("arg", {})))
            elif kind in ("parameter", "buffer", "tensor_constant"):
                original = body.get(f"{kind}_name", "")
                arg = body.get("arg", {})
                if arg.get("name"):
                    constants[arg["name"]] = (kind, original)
        return user_inputs, constants

    def _fix_symbols(self, user_inputs: list[str], tensor_meta: Mapping) -> None:
        """Symbolic input dimensions given a size by --shape (a free dimension otherwise warns)."""
        for name in user_inputs:
            sizes = (tensor_meta.get(name) or {}).get("sizes") or []
            given = self.input_shapes.get(name)
            if given is not None and len(given) != len(sizes):
                raise ModelLoadError(str(self.path), f"--shape gives input '{name}' {len(given)} dimensions, "
                                                     f"the program says {len(sizes)}")
            free = []
            for index, size in enumerate(sizes):
                expr = (size.get("as_expr") or {}).get("expr_str") if isinstance(size, dict) else None
                if not isinstance(expr, str):
                    fixed = size.get("as_int") if isinstance(size, dict) else None
                    if given is not None and fixed is not None and int(given[index]) != fixed:
                        raise ModelLoadError(str(self.path), f"--shape gives input '{name}' dimension {index} "
                                                             f"size {given[index]}, but the program was exported "
                                                             f"with it fixed at {fixed}")
                    continue
                tree = _parse_size(expr) if "(" in expr else ("sym", expr.strip())
                if given is not None and isinstance(tree, tuple) and tree[0] == "sym":
                    self.symbols[tree[1]] = int(given[index])
                elif given is None:
                    free.append(expr if tree is None else self._symbol_range(_size_text(tree)))
            if free:
                self.warnings.append(f"input '{name}' has symbolic dimensions ({', '.join(free)}): costs that "
                                     f"depend on them are unknown; fix them with --shape {name}=...")

    def _symbol_range(self, symbol: str) -> str:
        bounds = (self.program.get("range_constraints") or {}).get(symbol)
        if isinstance(bounds, dict) and "min_val" in bounds:
            return f"{symbol} in {bounds.get('min_val')}..{bounds.get('max_val')}"
        return symbol

    def _tensor_type(self, meta: Any) -> Optional[TensorType]:
        if not isinstance(meta, dict):
            return None
        dtype = _DTYPES.get(meta.get("dtype"), f"torch-type-{meta.get('dtype')}")
        sizes = meta.get("sizes")
        if not isinstance(sizes, list):
            return TensorType(dtype, None)
        return TensorType(dtype, tuple(self._dim(size) for size in sizes))

    def _dim(self, size: Any):
        if not isinstance(size, dict):
            return None
        if "as_int" in size:
            return size["as_int"]
        expr = (size.get("as_expr") or {}).get("expr_str")
        if not isinstance(expr, str):
            return None
        cached = self._sizes.get(expr)
        if cached is None:
            tree = _parse_size(expr) if "(" in expr else ("sym", expr.strip())
            if tree is None:
                cached = expr
            else:
                value = _size_value(tree, self.symbols)
                cached = value if value is not None else _size_text(tree)
            self._sizes[expr] = cached
        return cached

    # -- nodes ----------------------------------------------------------------------------

    def _nodes(self, nodes_json: Any, values: dict[str, Value]) -> list[Node]:
        if not isinstance(nodes_json, list):
            raise ModelLoadError(str(self.path), "not a valid torch.export program: graph nodes is not a list")
        nodes: list[Node] = []
        used_ids: set[str] = set()
        unknown: dict[str, list[str]] = {}
        for index, node in enumerate(nodes_json):
            if not isinstance(node, dict):
                raise ModelLoadError(str(self.path), f"not a valid torch.export program: node {index} is not an object")
            target = str(node.get("target", ""))
            match = _TARGET.match(target)
            namespace_name, op_name = (match["namespace"], match["op"]) if match else ("", target)
            if namespace_name == "aten" and op_name.startswith("_assert"):
                continue  # a runtime check, not a layer
            op_type = _OP_TYPES.get(op_name) if namespace_name == "aten" else None
            inputs, attributes = _arguments(node.get("inputs") or [])
            if op_type is not None:
                op_type = _adjust(op_name, op_type, attributes)
                order = _REORDERED_INPUTS.get(op_name)
                if order and len(inputs) == len(order):
                    inputs = tuple(inputs[i] for i in order)
            else:
                op_type = f"{namespace_name}.{op_name}" if namespace_name else op_name
                unknown.setdefault(op_type, [])
            attributes["target"] = target
            outputs = tuple(name for arg in node.get("outputs") or [] for name in _tensor_names(arg))
            for value_name in inputs + outputs:
                if value_name and value_name not in values:
                    values[value_name] = Value(value_name)
            name = str(node.get("name") or (outputs[0] if outputs and outputs[0] else f"{op_name}_{index}"))
            node_id = _unique_id(name, used_ids)
            if op_type in unknown:
                unknown[op_type].append(node_id)
            metadata = node.get("metadata") or {}
            nodes.append(Node(node_id, op_type, name, self._namespace(metadata.get("nn_module_stack", "")),
                              inputs, outputs, attributes, {}, namespace_name))
        for op_type, ids in unknown.items():
            where = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            self.warnings.append(f"op '{op_type}' has no cost formula in LayerScope: {where} shown with "
                                 "shapes and cost unknown")
        return nodes

    def _namespace(self, stack: str) -> str:
        """'L__self__,,M;L__self__stem.0,stem.0,torch.nn.Conv2d' -> 'stem/0' (the innermost module)."""
        namespace = self._namespaces.get(stack)
        if namespace is None:
            innermost = stack.rpartition(";")[2]
            parts = _split_stack_entry(innermost)
            module_path = parts[1] if len(parts) == 3 else ""
            if module_path.startswith("_empty_nn_module_stack"):
                module_path = ""  # nodes torch's passes insert (shape reads) carry this placeholder
            namespace = self._namespaces[stack] = module_path.replace(".", "/")
        return namespace


def _adjust(op_name: str, op_type: str, attributes: dict) -> str:
    """Attributes the cost formulas read, in their ONNX names; and the op types an argument decides."""
    if op_type == "Conv" and attributes.get("transposed") is True:
        op_type = "ConvTranspose"
    if op_type in ("MaxPool", "AveragePool"):
        kernel = attributes.get("kernel_size")
        if isinstance(kernel, int):
            kernel = (kernel,) * {"1": 1, "2": 2, "3": 3}.get(op_name[-1], 2)
        if kernel:
            attributes["kernel_shape"] = tuple(kernel)
    if op_type == "Resize":
        attributes["mode"] = _RESIZE_MODES.get(op_name, "linear")
    return op_type


def _arguments(named_arguments: Iterable) -> tuple[tuple[str, ...], dict]:
    """Tensor input names in order (lists flattened, an omitted optional tensor as ""), and the
    other arguments as attributes by their schema names."""
    inputs: list[str] = []
    attributes: dict = {}
    for position, named in enumerate(named_arguments):
        if not isinstance(named, dict):
            continue
        arg = named.get("arg") or {}
        key = named.get("name") or f"arg{position}"
        kind, body = next(iter(arg.items())) if isinstance(arg, dict) and arg else ("as_none", True)
        if kind in ("as_tensor", "as_tensors", "as_optional_tensors", "as_optional_tensor"):
            inputs.extend(_tensor_names(arg, keep_none=True))
        elif kind in ("as_sym_int", "as_sym_ints", "as_sym_float", "as_sym_bool"):
            attributes[key] = _symbolic(body)
        elif kind in ("as_int", "as_float", "as_bool", "as_string", "as_scalar_type"):
            attributes[key] = body
        elif kind in ("as_ints", "as_floats", "as_bools", "as_strings"):
            attributes[key] = tuple(body)
        elif kind != "as_none":
            attributes[key] = f"<{kind[3:]}>"
    return tuple(inputs), attributes


def _symbolic(body: Any):
    if isinstance(body, list):
        return tuple(_symbolic(item) for item in body)
    if isinstance(body, dict) and body:
        return next(iter(body.values()))
    return body


def _tensor_names(arg: Any, keep_none: bool = False) -> list[str]:
    """Value names in an Argument: as_tensor, as_tensors, optional tensors, sym ints by name."""
    if not isinstance(arg, dict) or not arg:
        return []
    kind, body = next(iter(arg.items()))
    if kind == "as_tensor":
        return [str(body.get("name", ""))] if isinstance(body, dict) else []
    if kind in ("as_tensors", "as_sym_ints"):
        return [name for item in body or [] for name in _tensor_names({"as_tensor" if kind == "as_tensors"
                                                                        else "as_sym_int": item})]
    if kind == "as_optional_tensor":
        return _tensor_names(body, keep_none)
    if kind == "as_optional_tensors":
        return [name for item in body or [] for name in _tensor_names(item, keep_none)]
    if kind == "as_sym_int" and isinstance(body, dict) and "as_name" in body:
        return [str(body["as_name"])]
    if kind == "as_none" and keep_none:
        return [""]
    return []


def _spec_tensor_names(spec: Any, wanted_kind: str) -> list[str]:
    if not isinstance(spec, dict) or wanted_kind not in spec:
        return []
    return _tensor_names((spec[wanted_kind] or {}).get("arg", {}))


def _split_stack_entry(entry: str) -> list[str]:
    """'key,path,type' split at top-level commas (a path can hold 'slice(None, 2, None)')."""
    parts, start, depth = [], 0, 0
    for position, char in enumerate(entry):
        if char in "[(":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(entry[start:position])
            start = position + 1
    parts.append(entry[start:])
    return parts


# Sizes are written as sympy's srepr: "Mul(Integer(2), Symbol('s27', positive=True, integer=True))".
_SREPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_]\w*)|(?P<number>-?\d+)|(?P<string>'[^']*')|(?P<punct>[(),=]))")
_SREPR_OPERATORS = {"Add": " + ", "Mul": "*", "Pow": "**", "FloorDiv": "//", "Mod": " % "}


def _parse_size(expr: str) -> Any:
    """srepr text -> ("sym", name) | int | (head, [args]); None when it is not srepr.
    A parser of a few node types, never eval() of text from the file."""
    tokens, position = [], 0
    while position < len(expr):
        match = _SREPR_TOKEN.match(expr, position)
        if match is None or match.end() == position:
            return None
        tokens.append((match.lastgroup, match[match.lastgroup]))
        position = match.end()
    index = 0

    def node():
        nonlocal index
        kind, text = tokens[index]
        index += 1
        if kind == "number":
            return int(text)
        if kind == "string":
            return text[1:-1]
        if kind != "name":
            raise ValueError(text)
        if index < len(tokens) and tokens[index] == ("punct", "="):  # keyword: positive=True
            index += 1
            node()
            return None
        if index >= len(tokens) or tokens[index] != ("punct", "("):
            return ("name", text)
        index += 1
        args = []
        while tokens[index] != ("punct", ")"):
            argument = node()
            if argument is not None:
                args.append(argument)
            if tokens[index] == ("punct", ","):
                index += 1
        index += 1
        if text == "Symbol":
            return ("sym", args[0])
        if text == "Integer":
            return args[0]
        return (text, args)

    try:
        tree = node()
        return tree if index == len(tokens) else None
    except (IndexError, ValueError, RecursionError):
        return None


def _size_value(tree: Any, symbols: Mapping[str, int]) -> Optional[int]:
    """The size an expression has once its symbols are fixed (None: a symbol or operator left)."""
    if isinstance(tree, int):
        return tree
    if not isinstance(tree, tuple):
        return None
    head, args = tree
    if head in ("sym", "name"):
        return symbols.get(args)
    values = [_size_value(arg, symbols) for arg in args]
    if not values or any(v is None for v in values):
        return None
    if head == "Add":
        return sum(values)
    if head == "Mul":
        result = 1
        for v in values:
            result *= v
        return result
    if head == "Pow" and len(values) == 2 and 0 <= values[1] < 64:
        return values[0] ** values[1]
    if head in ("FloorDiv", "Mod") and len(values) == 2 and values[1]:
        return values[0] // values[1] if head == "FloorDiv" else values[0] % values[1]
    if head in ("Max", "Min"):
        return max(values) if head == "Max" else min(values)
    return None


def _size_text(tree: Any) -> str:
    """A readable form of a size expression: 's27', '2*s27'."""
    if isinstance(tree, int):
        return str(tree)
    head, args = tree
    if head in ("sym", "name"):
        return str(args)
    parts = [_size_text(arg) for arg in args]
    if head in _SREPR_OPERATORS:
        return "(" + _SREPR_OPERATORS[head].join(parts) + ")" if head == "Add" else _SREPR_OPERATORS[head].join(parts)
    return f"{head}({', '.join(parts)})"


def _schema_version(version: Any) -> str:
    if isinstance(version, dict):
        return f"{version.get('major', '?')}.{version.get('minor', '?')}"
    return str(version or "")


def _unique_id(candidate: str, used: set[str]) -> str:
    node_id, suffix = candidate, 1
    while node_id in used:
        suffix += 1
        node_id = f"{candidate}#{suffix}"
    used.add(node_id)
    return node_id
