"""LayerScope's framework-neutral model representation.

Every importer produces these objects and everything downstream (analysis,
targets, reports, the GUI) reads only them.  They are frozen dataclasses with
tuple fields: once an importer has built a model nothing can change it, so
analysis results and profiles keyed by node id stay valid.

Weights are *described* (dtype, shape, byte size, where the bytes live), never
held: opening a 300 MB model must not read 300 MB.  `WeightLocation` says
where the bytes are so that a runner can read them when it needs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Optional, Union

# A dimension is a known size (int), a symbolic name ("batch"), or unknown (None).
Dim = Union[int, str, None]

# Bytes per element of the dtypes that importers produce (names follow numpy).
DTYPE_BYTES: Mapping[str, float] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "float8e4m3fn": 1, "float8e4m3fnuz": 1, "float8e5m2": 1, "float8e5m2fnuz": 1,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1,
    "int4": 0.5, "uint4": 0.5, "uint1": 0.125, "uint2": 0.25, "uint3": 0.375, "uint6": 0.75,
    "int1": 0.125, "int2": 0.25, "int3": 0.375, "int6": 0.75, "bool": 1,
    "complex64": 8, "complex128": 16,
}

FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "float8e4m3fn",
                          "float8e4m3fnuz", "float8e5m2", "float8e5m2fnuz"})


@dataclass(frozen=True, slots=True)
class TensorType:
    """Element type and shape of a tensor.  `shape` is None when even the rank is unknown."""

    dtype: str
    shape: Optional[tuple[Dim, ...]] = None
    # Computed once: analysis asks for sizes several times per value (about 170,000 times for
    # a 20,000-node model), and a frozen object never changes.
    _element_count: Optional[int] = field(default=None, init=False, repr=False, compare=False)
    _byte_size: Optional[int] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        count: Optional[int] = None
        if self.shape is not None:
            count = 1
            for d in self.shape:
                if not isinstance(d, int) or d < 0:
                    count = None
                    break
                count *= d
        object.__setattr__(self, "_element_count", count)
        if count is not None:
            object.__setattr__(self, "_byte_size", int(count * DTYPE_BYTES.get(self.dtype, 4) + 0.5))

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self._element_count is not None

    @property
    def element_count(self) -> Optional[int]:
        """Number of elements, or None when any dimension is not a known integer."""
        return self._element_count

    @property
    def byte_size(self) -> Optional[int]:
        return self._byte_size  # None when any dimension is not a known integer

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "x".join("?" if d is None else str(d) for d in self.shape) or "scalar"


@dataclass(frozen=True, slots=True)
class WeightLocation:
    """Where the bytes of a constant tensor live, so they can be read on demand.

    kind: "embedded" (a slice of the model file itself), "external" (a slice of
    a side file, ONNX external data), "blob" (Core ML weight.bin), "inline"
    (small enough that the importer kept the values, see `Value.small_data`),
    "zip-member" (a compressed or pickled member of a .pt2 archive, path
    "file.pt2::member": named, never read) or "unlocated" (described by the
    model, its bytes not mapped by the file, as in legacy .pt2 archives).
    """

    kind: str
    path: str = ""
    offset: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class Initializer:
    """A constant tensor's description; the data stays on disk."""

    type: TensorType
    location: WeightLocation

    @property
    def byte_size(self) -> int:
        size = self.type.byte_size
        return size if size is not None else self.location.length


@dataclass(frozen=True, slots=True)
class Value:
    """A tensor flowing along an edge (or a graph input/output, or a weight)."""

    name: str
    type: Optional[TensorType] = None
    initializer: Optional[Initializer] = None
    # Values of small constants (shapes, axes, scalars) as a flat tuple: analysis
    # needs them (e.g. a Reshape target) and they cost nothing to keep.
    small_data: Optional[tuple] = None
    # Quantization parameters of a quantized tensor (TFLite): {"scale": (...), "zero_point": (...),
    # "channels": n, "axis": k, "min"/"max": (...)}; per-channel lists are shortened, "channels" counts them.
    quantization: Optional[Mapping[str, object]] = None

    @property
    def is_constant(self) -> bool:
        return self.initializer is not None


@dataclass(frozen=True, slots=True)
class Node:
    """One operation.  `id` is unique within its graph and stable across loads of the same file."""

    id: str
    op_type: str
    name: str = ""
    namespace: str = ""  # "encoder/block3/conv"; "" when the format has no scopes
    inputs: tuple[str, ...] = ()  # value names; "" marks an omitted optional input
    outputs: tuple[str, ...] = ()
    attributes: Mapping[str, object] = field(default_factory=dict)
    # Bodies of control-flow ops (If/Loop/Scan), kept as graphs of their own.
    subgraphs: Mapping[str, "Graph"] = field(default_factory=dict)
    domain: str = ""

    def __hash__(self) -> int:  # attributes is a dict; identity within a graph is the id
        return hash(self.id)


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    values: Mapping[str, Value]
    # Rank-4/5 activations are N,spatial...,C (TFLite's NHWC) instead of N,C,spatial... (ONNX, Core ML):
    # the analysis reads spatial sizes and kernel sizes on the axes this says.
    channels_last: bool = False

    def node(self, node_id: str) -> Node:
        return self.nodes_by_id[node_id]

    @cached_property
    def nodes_by_id(self) -> dict[str, Node]:
        # Cached on first use; the graph is immutable so the index never goes stale.
        return {n.id: n for n in self.nodes}

    def value_type(self, name: str) -> Optional[TensorType]:
        return self.value_types.get(name)

    @cached_property
    def value_types(self) -> dict[str, Optional[TensorType]]:
        """Value name -> its type (None: unknown): the analysis asks ~9 times per node, and a
        dict lookup is a third of the cost of `value_type`'s two."""
        return {name: value.type for name, value in self.values.items()}

    def producers(self) -> dict[str, Node]:
        """Value name -> the node producing it."""
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    result.setdefault(name, []).append(node)
        return result


@dataclass(frozen=True, slots=True)
class Model:
    """A whole model file: one graph, or several for pipelines (one graph per sub-model)."""

    format: str  # "onnx", "coreml-neuralnetwork", "coreml-mlprogram", "coreml-pipeline", ...
    producer: str
    graphs: tuple[Graph, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    # Problems found while importing that do not stop the model from opening
    # (unknown ops, inputs without shapes).  Each names what to do about it.
    warnings: tuple[str, ...] = ()

    @property
    def main_graph(self) -> Graph:
        return self.graphs[0]


class ModelLoadError(Exception):
    """A file that cannot be opened as a model.  The message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
