"""The ONNX side of a conversion: the full model, our IR of it, and its constants.

Conversion needs the weight data, so unlike the importer this reads the whole
file with `onnx.load` (external data included).  Node ids, value types and the
set of constant nodes come from our own IR and analysis (`importers.onnx`,
`engine.analysis`), so that the layer map is keyed exactly like every other
overlay and "folded" means the same thing here as in the inspector.

Constants are evaluated lazily with numpy (the onnx package's reference
evaluator for anything that is not a one-liner): a folded node's value is
computed only when a compute node reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from engine.analysis import analyze
from engine.free_memory import IGNORE_OPTION, check_external_data
from engine.ir import Graph, Model, ModelLoadError, Node, TensorType


class FoldError(Exception):
    """A constant node that cannot be evaluated at conversion time."""

    def __init__(self, node_id: str, op_type: str, reason: str):
        self.node_id = node_id
        self.op_type = op_type
        self.reason = reason
        super().__init__(f"{node_id} ({op_type}): {reason}")


# What a conversion refused for memory leaves a person to do, the way past it aside (each front end
# names its own: the CLI an option, the app a button).
MEMORY_ADVICE = ("converting reads them all into memory: convert it on a computer with more memory, "
                 "or free memory first")


class MemoryRefusalError(ModelLoadError):
    """The weights kept outside the model file exceed the free memory (engine.free_memory): refused
    before any is read.  `refusal` names both sizes; the message ends with the CLI's way past it."""

    def __init__(self, path: Path, refusal: str):
        self.refusal = refusal
        super().__init__(str(path), f"{refusal}; {MEMORY_ADVICE}, or convert it anyway ({IGNORE_OPTION})")


@dataclass
class SourceModel:
    """An ONNX model ready to convert: proto (with weights), IR graph, constants."""

    path: Path
    proto: onnx.ModelProto
    model: Model  # our IR, with the caller's input shapes applied
    graph: Graph
    order: list[Node]  # execution order (same as analysis)
    folded: set[str]  # ids of nodes that only produce constants
    opset: int
    node_protos: dict[str, onnx.NodeProto]  # node id -> its NodeProto
    # Flexible input shapes: value name -> axes whose size varies at run time (empty when
    # every input is fixed), and the shape-inferred graphs of the probe shapes (input sizes
    # -> our IR's graph at those sizes) that verification compares the program against.
    flexible: dict[str, frozenset[int]] = field(default_factory=dict)
    probes: list[tuple[dict[str, tuple[int, ...]], Graph]] = field(default_factory=list)
    target: str = "iOS16"  # the deployment target, for op checks that depend on it
    # Inputs replaced by an assumed constant value (--assume-full-attention-mask): name -> what
    # was assumed (shape, dtype, value, meaning, the folded nodes that depend on it); and the
    # reasons an asked-for assumption could not be made (reported as blockers).
    assumed_inputs: dict = field(default_factory=dict)
    assumption_problems: list = field(default_factory=list)
    analysis: object = None  # engine.analysis.ModelAnalysis of `model` (stages, costs per node)
    load_warnings: list = field(default_factory=list)  # the free-memory check skipped or overridden
    _initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    _values: dict[str, np.ndarray] = field(default_factory=dict)
    _producers: dict[str, Node] = field(default_factory=dict)
    _constant_names: set[str] = field(default_factory=set)

    # -- constants -------------------------------------------------------------------

    def is_constant(self, value_name: str) -> bool:
        return value_name in self._constant_names

    def producer(self, value_name: str) -> Optional[Node]:
        """The node whose output `value_name` is (None for graph inputs and initializers)."""
        return self._producers.get(value_name)

    def constant(self, value_name: str) -> np.ndarray:
        """The value of a constant tensor (an initializer or the output of a folded node)."""
        if value_name in self._values:
            return self._values[value_name]
        if value_name in self._initializers:
            array = numpy_helper.to_array(self._initializers[value_name])
            self._values[value_name] = array
            return array
        node = self._producers.get(value_name)
        if node is None or node.id not in self.folded:
            raise KeyError(f"'{value_name}' is not a constant")
        outputs = self._evaluate(node)
        for name, array in zip(node.outputs, outputs):
            if name:
                self._values[name] = array
        return self._values[value_name]

    def release_constants(self) -> None:
        """Drop evaluated constant arrays (the MIL program holds its own copies by now)."""
        self._values.clear()

    def value_type(self, value_name: str) -> Optional[TensorType]:
        return self.graph.value_type(value_name)

    def _evaluate(self, node: Node) -> list[np.ndarray]:
        proto = self.node_protos[node.id]
        if node.op_type == "Shape":
            source = self.graph.value_type(node.inputs[0])
            if source is None or not source.is_static:
                raise FoldError(node.id, node.op_type, "the shape of its input is not known")
            shape = np.array(source.shape, dtype=np.int64)
            start = int(node.attributes.get("start", 0))
            end = node.attributes.get("end")
            return [shape[start:None if end is None else int(end)]]
        if node.op_type == "Size":
            source = self.graph.value_type(node.inputs[0])
            if source is None or not source.is_static:
                raise FoldError(node.id, node.op_type, "the shape of its input is not known")
            return [np.array(int(np.prod(source.shape, dtype=np.int64)), dtype=np.int64)]
        inputs = [self.constant(name) if name else None for name in node.inputs]
        try:
            if node.op_type == "Constant":
                return [_constant_node_value(proto)]
            if node.op_type == "ConstantOfShape":
                return [_constant_of_shape(proto, inputs[0])]
            if node.op_type in ("Identity", "Dropout") and inputs:
                return [inputs[0]] + [np.ones(inputs[0].shape, dtype=bool)] * (len(node.outputs) - 1)
            return _reference_evaluate(proto, inputs, self.opset)
        except FoldError:
            raise
        except Exception as exc:  # the reference evaluator failing: name the node
            raise FoldError(node.id, node.op_type, f"cannot be evaluated at conversion time "
                                                   f"({type(exc).__name__}: {exc})") from exc


def load_source(path: Path, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                with_weights: bool = True,
                probe_shapes: Sequence[Mapping[str, Sequence[int]]] = (),
                full_attention_mask: Optional[str] = None, ignore_memory_check: bool = False) -> SourceModel:
    """Read an ONNX model for conversion.  Raises engine.ir.ModelLoadError for unusable files.

    input_shapes fixes the shapes the program is built (and checked) at; probe_shapes are
    other input shapes the program must also accept (flexible inputs): the axes whose sizes
    differ between them are the flexible ones.  full_attention_mask names an attention-mask
    input to take as all ones (`assume_full_attention_mask`).  ignore_memory_check: read weights
    kept outside the file even when they exceed the free memory (engine.free_memory).
    """
    from importers import open_model

    path = Path(path)
    model = open_model(path)
    if model.format != "onnx":
        raise ModelLoadError(str(path), f"is a {model.format} model: conversion to Core ML "
                                        "starts from an ONNX file")
    proto = onnx.load(str(path), load_external_data=False)
    memory_note = None
    if with_weights:  # all of them, into memory: refused first when they cannot fit
        check = check_external_data(proto, path, ignore_memory_check)
        if check.refusal is not None:
            raise MemoryRefusalError(path, check.refusal)
        memory_note = check.note
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # a weights file shorter than the model says, or missing
            raise ModelLoadError(str(path), f"could not read its external data: {type(exc).__name__}: {exc}") from None
    assumed, problems = {}, []
    if full_attention_mask:
        assumed, problems = assume_full_attention_mask(proto, full_attention_mask, input_shapes or {})
        input_shapes = {k: v for k, v in (input_shapes or {}).items() if k not in assumed}
    if input_shapes or assumed:
        model = _ir_at_shapes(path, proto, input_shapes or {})
    source = _assemble(path, proto, model)
    # The shape-fixing pass: values folded at these shapes (shape arithmetic) may fix shapes
    # that ONNX shape inference could not follow; infer again with them until nothing changes.
    for _ in range(_MAX_SHAPE_PASSES):
        refined = _refine_shapes(path, proto, source)
        if refined is None:
            break
        source = _assemble(path, proto, refined)
    probes = []
    for shapes in probe_shapes:
        shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        probes.append((shapes, _ir_at_shapes(path, proto, {**dict(input_shapes or {}), **shapes}).main_graph))
    source.probes = probes
    source.flexible = _flexible_axes(source.graph, probes)
    source.assumption_problems = problems
    for name, assumption in assumed.items():
        assumption["folded_nodes"] = _folded_from(source, name)
    source.assumed_inputs = assumed
    source.load_warnings = [f"{path.name}: {memory_note}"] if memory_note else []
    return source


FULL_ATTENTION_MASK_MEANING = ("every row of the batch attends to its whole sequence (past and new tokens): "
                               "no padding, no masked positions")


def assume_full_attention_mask(proto: onnx.ModelProto, name: str, input_shapes: Mapping[str, Sequence[int]]
                               ) -> tuple[dict, list[str]]:
    """Replace the input `name` of `proto` by a constant of ones (at its --shape or declared shape).

    What onnxruntime-genai exports compute from attention_mask (GroupQueryAttention's seqlens_k
    = ReduceSum - 1, the total length from its Shape) then folds at conversion time.  Returns
    ({name: what was assumed}, problems); on a problem the proto is left unchanged.
    """
    graph_input = next((value for value in proto.graph.input if value.name == name), None)
    if graph_input is None:
        inputs = ", ".join(value.name for value in proto.graph.input
                           if value.name not in {t.name for t in proto.graph.initializer})
        return {}, [f"the model has no input '{name}' (its inputs: {inputs})"]
    tensor_type = graph_input.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) if tensor_type.elem_type else None
    if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
                             or dtype == np.bool_):
        return {}, [f"input '{name}' is not a numeric tensor"]
    shape = input_shapes.get(name)
    if shape is None:
        dims = tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            return {}, [f"input '{name}' has free sizes; give them with --shape {name}=1xTOTAL (past + new tokens)"]
        shape = [d.dim_value for d in dims]
    shape = [int(d) for d in shape]
    ones = np.ones(shape, dtype=dtype)
    proto.graph.input.remove(graph_input)
    proto.graph.initializer.append(numpy_helper.from_array(ones, name))
    return {name: {"input": name, "value": "all ones", "shape": shape, "dtype": str(np.dtype(dtype)),
                   "meaning": FULL_ATTENTION_MASK_MEANING}}, []


def _folded_from(source: SourceModel, name: str) -> list[str]:
    """Ids of the folded nodes whose value depends on the tensor `name`, in execution order."""
    reached, nodes = {name}, []
    for node in source.order:
        if node.id in source.folded and any(value in reached for value in node.inputs if value):
            reached.update(out for out in node.outputs if out)
            nodes.append(node.id)
    return nodes


def _assemble(path: Path, proto: onnx.ModelProto, model: Model) -> SourceModel:
    graph = model.main_graph
    if len(proto.graph.node) != len(graph.nodes):
        raise RuntimeError("the IR and the ONNX file disagree on the node count")
    node_protos = {}
    for node, node_proto in zip(graph.nodes, proto.graph.node):
        assert node.op_type == node_proto.op_type
        node_protos[node.id] = node_proto
    analysis = analyze(model)
    order = [graph.node(node_id) for node_id in analysis.order]
    folded = {node_id for node_id, metrics in analysis.nodes.items() if metrics.is_constant}
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 1)
    initializers = {t.name: t for t in proto.graph.initializer}
    producers = {out: node for node in graph.nodes for out in node.outputs if out}
    constant_names = {name for name in initializers if name not in graph.inputs}
    for node in graph.nodes:
        if node.id in folded:
            constant_names.update(out for out in node.outputs if out)
    return SourceModel(path=path, proto=proto, model=model, graph=graph, order=order, folded=folded,
                       opset=opset, node_protos=node_protos, analysis=analysis, _initializers=initializers,
                       _producers=producers, _constant_names=constant_names)


# Each pass can only fold what the previous one made static; real exports need one or two.
_MAX_SHAPE_PASSES = 4
# Folded values up to this many elements are handed to shape inference (shapes, axes, masks).
_SHAPE_VALUE_ELEMENTS = 4096


def _refine_shapes(path: Path, proto: onnx.ModelProto, source: SourceModel) -> Optional[Model]:
    """Our IR again, with the shapes that the folded values fix; None when they fix nothing new.

    ONNX shape inference propagates values only through a few ops (Shape, Gather, Concat,
    Unsqueeze, ...): a shape that an export computes through Where, Equal, ConstantOfShape or
    Range stays unknown, and so does everything after the Expand or Reshape that uses it.
    Here the folded values are known, so they are given to shape inference as constants (on a
    copy, where each compute node reads them from an initializer of their own, and contrib ops are
    replaced by standard ops of the same output shapes), and the shapes
    it finds are kept as the tensors' stored shapes of a second copy that has the original
    nodes, names and ids: the layer map stays keyed by the original graph.
    """
    graph = source.graph
    unknown = {name for node in source.order if node.id not in source.folded
               for name in node.outputs if name and not _is_static(graph.value_type(name))}
    if not unknown:
        return None
    values: dict[str, np.ndarray] = {}
    for node in source.order:
        if node.id in source.folded:
            continue
        for name in node.inputs:
            if name and name not in values and name in source._producers and source.is_constant(name):
                try:
                    value = source.constant(name)
                except FoldError:
                    continue
                if value.size <= _SHAPE_VALUE_ELEMENTS:
                    values[name] = value
    probe = _copy_at_input_shapes(proto, graph)
    # ONNX Runtime's contrib ops are unknown to ONNX shape inference: standard ops with the same
    # output shapes stand in for them on this copy (engine/convert/ops_contrib.py).
    from engine.convert.ops_contrib import replace_with_standins

    if not replace_with_standins(probe) and not values:
        return None
    for node in probe.graph.node:
        for index, name in enumerate(node.input):
            if name in values:
                node.input[index] = f"{name}__folded_value"
    for name, value in values.items():
        probe.graph.initializer.append(numpy_helper.from_array(value, f"{name}__folded_value"))
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # inference refusing the copy: keep what the first pass found
        return None
    found = [info for info in inferred.graph.value_info
             if info.name in unknown and _proto_static(info)]
    found_outputs = [info for info in inferred.graph.output if info.name in unknown and _proto_static(info)]
    if not found and not found_outputs:
        return None
    copy = _copy_at_input_shapes(proto, graph)
    copy.graph.value_info.extend(found)
    inferred_outputs = {info.name: info for info in inferred.graph.output}
    for output in copy.graph.output:
        info = inferred_outputs.get(output.name)
        if output.name in unknown and info is not None and _proto_static(info):
            output.CopyFrom(info)
    # keep the shapes already known too, so this pass never loses one
    for name, value in graph.values.items():
        if name not in unknown and value.type is not None and _is_static(value.type) \
                and name not in graph.inputs and name not in graph.outputs and value.initializer is None:
            try:
                element_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(value.type.dtype))
            except TypeError:  # a type numpy does not name (bfloat16, ...): inferred again anyway
                continue
            copy.graph.value_info.append(onnx.helper.make_tensor_value_info(name, element_type,
                                                                            list(value.type.shape)))
    # The inputs are already at their shapes: opening with input shapes would drop the stored ones.
    return _open_copy(path, copy, {})


def _copy_at_input_shapes(proto: onnx.ModelProto, graph: Graph) -> onnx.ModelProto:
    """A stripped copy whose inputs have the shapes our IR gave them (the --shape sizes)."""
    copy = _stripped_copy(proto)
    for graph_input in copy.graph.input:
        value_type = graph.value_type(graph_input.name)
        if value_type is not None and value_type.is_static and graph_input.type.HasField("tensor_type"):
            shape = graph_input.type.tensor_type.shape
            shape.ClearField("dim")
            for size in value_type.shape:
                shape.dim.add().dim_value = int(size)
    return copy


def _is_static(value_type: Optional[TensorType]) -> bool:
    return value_type is not None and value_type.is_static


def _proto_static(info: onnx.ValueInfoProto) -> bool:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") for d in info.type.tensor_type.shape.dim)


def _ir_at_shapes(path: Path, proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> Model:
    """Our IR of the model with other input shapes, inferred afresh.

    The shapes a file stores (value_info, output shapes: exporters write them) describe the
    sizes it was exported at; ONNX shape inference keeps those when the inputs change, so
    opening the file itself with new input shapes gives stale intermediate shapes.  This
    opens a copy without them (and without weight data, which shapes do not need).
    """
    return _open_copy(path, _stripped_copy(proto), input_shapes)


def _stripped_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without stored intermediate shapes and without large weight data."""
    copy = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name,
                           producer_version=proto.producer_version, domain=proto.domain,
                           model_version=proto.model_version, doc_string=proto.doc_string)
    copy.opset_import.extend(proto.opset_import)
    copy.metadata_props.extend(proto.metadata_props)
    copy.functions.extend(proto.functions)
    graph = copy.graph
    graph.name = proto.graph.name
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    for output in proto.graph.output:
        stripped = graph.output.add()
        stripped.CopyFrom(output)
        if stripped.type.HasField("tensor_type"):
            stripped.type.tensor_type.ClearField("shape")
    for tensor in proto.graph.initializer:
        if int(np.prod(tensor.dims)) <= 1024:  # small constants (shapes, axes) keep their values
            graph.initializer.append(tensor)
        else:  # shapes need the dims only
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return copy


def _open_copy(path: Path, copy: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> Model:
    import dataclasses
    import tempfile

    from importers import open_model

    with tempfile.TemporaryDirectory(prefix="layerscope-shapes-") as folder:
        copy_path = Path(folder) / path.name
        onnx.save_model(copy, str(copy_path))
        model = open_model(copy_path, input_shapes=input_shapes)
    return dataclasses.replace(model, path=str(path))


def _flexible_axes(graph: Graph, probes) -> dict[str, frozenset[int]]:
    """Per value: the axes whose size is not the same at every probe shape as at the default."""
    flexible: dict[str, frozenset[int]] = {}
    for name, value in graph.values.items():
        if value.type is None or value.type.shape is None or value.initializer is not None:
            continue
        axes = set()
        for _, probe in probes:
            other = probe.value_type(name)
            for axis, size in enumerate(value.type.shape):
                if other is None or other.shape is None or len(other.shape) != len(value.type.shape) \
                        or other.shape[axis] != size:
                    axes.add(axis)
        if axes:
            flexible[name] = frozenset(axes)
    return flexible


# ----------------------------------------------------------------------------- evaluation

def _constant_node_value(proto: onnx.NodeProto) -> np.ndarray:
    for attribute in proto.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_float":
            return np.array(attribute.f, dtype=np.float32)
        if attribute.name == "value_floats":
            return np.array(list(attribute.floats), dtype=np.float32)
        if attribute.name == "value_int":
            return np.array(attribute.i, dtype=np.int64)
        if attribute.name == "value_ints":
            return np.array(list(attribute.ints), dtype=np.int64)
    raise FoldError(proto.name, "Constant", "has no value this converter reads "
                                            "(sparse and string constants are not supported)")


def _constant_of_shape(proto: onnx.NodeProto, shape: Optional[np.ndarray]) -> np.ndarray:
    fill = np.zeros(1, dtype=np.float32)
    for attribute in proto.attribute:
        if attribute.name == "value":
            fill = numpy_helper.to_array(attribute.t).reshape(-1)
    dims = [] if shape is None else [int(d) for d in np.asarray(shape).reshape(-1)]
    return np.full(dims, fill[0], dtype=fill.dtype)


def _attributes(proto: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}


def _axes(attributes: dict, inputs: list, index: int) -> Optional[list[int]]:
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return list(attributes["axes"]) if "axes" in attributes else None


def _fast_evaluate(op_type: str, proto: onnx.NodeProto, inputs: list) -> Optional[list[np.ndarray]]:
    """numpy one-liners for the ops that shape weights (the reference evaluator is slower)."""
    attributes = _attributes(proto)
    x = inputs[0] if inputs else None
    if op_type == "Unsqueeze":
        axes = _axes(attributes, inputs, 1)
        rank = x.ndim + len(axes)
        return [np.expand_dims(x, tuple(sorted(a % rank for a in axes)))]
    if op_type == "Squeeze":
        axes = _axes(attributes, inputs, 1)
        return [np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))]
    if op_type == "Reshape":
        target = [int(d) for d in np.asarray(inputs[1]).reshape(-1)]
        if not attributes.get("allowzero", 0):
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return [x.reshape(target)]
    if op_type == "Flatten":
        axis = int(attributes.get("axis", 1))
        axis = axis + x.ndim if axis < 0 else axis  # a negative axis counts from the rank
        return [x.reshape(int(np.prod(x.shape[:axis])), -1)]
    if op_type == "Transpose":
        perm = attributes.get("perm")
        return [np.transpose(x, perm)]
    if op_type == "Concat":
        return [np.concatenate([i for i in inputs if i is not None], axis=int(attributes["axis"]))]
    if op_type in ("Add", "Sub", "Mul", "Div") and len(inputs) == 2 and np.issubdtype(x.dtype, np.floating):
        function = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op_type]
        return [function(x, inputs[1]).astype(np.result_type(x, inputs[1]))]
    return None


def _reference_evaluate(proto: onnx.NodeProto, inputs: list, opset: int) -> list[np.ndarray]:
    fast = _fast_evaluate(proto.op_type, proto, inputs)
    if fast is not None:
        return fast
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    # A one-node model, so that the evaluator picks the op version of the model's opset.
    node = onnx.NodeProto()
    node.CopyFrom(proto)
    feeds, graph_inputs = {}, []
    for index, array in enumerate(inputs):
        if array is not None:
            name = f"in{index}"
            node.input[index] = name
            feeds[name] = array
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
    outputs = []
    for index in range(len(node.output)):
        if node.output[index]:
            node.output[index] = f"out{index}"
            outputs.append(helper.make_empty_tensor_value_info(f"out{index}"))
    graph = helper.make_graph([node], "fold", graph_inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    results = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(r) for r in results]
