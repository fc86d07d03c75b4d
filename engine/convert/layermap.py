"""The layer map: which MIL operations each ONNX node became.

Stored as JSON beside the package: `OUT.mlpackage` -> `OUT.layermap.json` (the
package directory itself is left exactly as coremltools wrote it, so Xcode and
Core ML see a standard package).  The model's metadata names the map file.

Schema "layerscope.layermap/1":

    {
      "schema": "layerscope.layermap/1",
      "source_model": "/abs/path/model.onnx",
      "source_sha256": "...",
      "package": "OUT.mlpackage",                 # relative to the map file
      "options": {"precision": "fp16", "target": "iOS16", ...},
      "nodes":   {onnx_node_id: [mil op name, ...]},   # every converted compute node
      "folded":  [onnx_node_id, ...],             # constant nodes evaluated at conversion
      "folded_into": {onnx_node_id: [compute node ids using its value], ...},
      "removed": [onnx_node_id, ...],             # Dropout/Identity and ops optimised away
      "removed_reasons": {onnx_node_id: "why"},
      "fused":   {onnx_node_id: owner_node_id},   # optimize="default" only: merged into owner's ops
      "mil_ops": {mil op name: {"type": "conv", "outputs": [...], "source": onnx_node_id | null}},
      "unattributed": [mil op name, ...],         # input/output casts, image preprocessing
      "inputs":  {onnx input: Core ML input}, "outputs": {onnx output: Core ML output},
      "source_nodes": {onnx_node_id: {"op_type", "stage", "output_bytes", "flops"}}
                                                  # every compute node, execution order
    }

MIL op names are the `name` of the operations in the saved program; "outputs"
are their output tensor names (what Core ML's compute plan and our Core ML
importer key operations by).  `sum_to_source` accepts either.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from engine.files import write_text_atomically

SCHEMA = "layerscope.layermap/1"
SUFFIX = ".layermap.json"


class LayerMapError(Exception):
    """A layer map file that cannot be used; the message says what is wrong with it."""


def layer_map_path(package_path: str | os.PathLike) -> Path:
    """Where the map of a package lives: beside it, `<name>.layermap.json`."""
    package = Path(package_path)
    stem = package.name[: -len(".mlpackage")] if package.name.endswith(".mlpackage") else package.name
    return package.with_name(stem + SUFFIX)


def load_layer_map(path: str | os.PathLike) -> dict:
    """Read a layer map (the JSON file, or the .mlpackage it belongs to)."""
    path = Path(path)
    if path.suffix == ".mlpackage" or path.is_dir():
        path = layer_map_path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayerMapError(f"{path}: no layer map here; convert the model with `layerscope convert` "
                            "to get one") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LayerMapError(f"{path}: not a readable layer map ({exc})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise LayerMapError(f"{path}: schema is {found!r}, expected {SCHEMA!r}")
    for key in ("nodes", "folded", "removed"):
        if key not in document:
            raise LayerMapError(f"{path}: the layer map has no '{key}'")
    return document


def write_layer_map(layer_map: Mapping, path: str | os.PathLike) -> Path:
    return write_text_atomically(path, json.dumps(layer_map, indent=1, sort_keys=False))


def source_index(layer_map: Mapping) -> dict[str, str]:
    """MIL op name and output name -> the source node whose result it is part of (ops of no
    source node are absent)."""
    index: dict[str, str] = {}
    for node_id, op_names in layer_map.get("nodes", {}).items():
        for name in op_names:
            index[name] = node_id
    for name, info in layer_map.get("mil_ops", {}).items():
        source = info.get("source") if isinstance(info, dict) else None
        if source is None:
            continue
        index.setdefault(name, source)
        for output in info.get("outputs", ()):
            index.setdefault(output, source)
    return index


def sum_to_source(layer_map: Mapping, per_mil_op_values: Mapping[str, float]) -> dict[str, float]:
    """Land per-MIL-op numbers (times, compute-plan costs) on the ONNX nodes they came from.

    Keys may be MIL op names or their first output names.  Ops that belong to no
    source node (input casts, image preprocessing) and unknown keys are left
    out; use `unattributed_total` for their sum.  Each op counts once, so the
    total is preserved for everything that is attributed.
    """
    index = source_index(layer_map)
    totals: dict[str, float] = {}
    for key, value in per_mil_op_values.items():
        node_id = index.get(key)
        if node_id is not None:
            totals[node_id] = totals.get(node_id, 0.0) + float(value)
    return totals


def unattributed_total(layer_map: Mapping, per_mil_op_values: Mapping[str, float]) -> float:
    """Sum of the values whose op belongs to no source node (or is not in the map)."""
    index = source_index(layer_map)
    return sum(float(v) for k, v in per_mil_op_values.items() if k not in index)


def source_node_of(layer_map: Mapping, mil_name: str) -> Optional[str]:
    """The source node of one MIL op (by op name or output name), None if it has none."""
    return source_index(layer_map).get(mil_name)


@dataclass(frozen=True)
class NodeLinks:
    """Source node <-> nodes of the converted package, for views that show both (synced selection).

    Converted node ids are those of our Core ML importer (first output name).  A node fused
    into another's op links to that op; removed nodes and ops of no source node link to nothing.
    """

    to_converted: Mapping[str, tuple[str, ...]]
    to_source: Mapping[str, str]

    def converted_of(self, source_id: str) -> tuple[str, ...]:
        return self.to_converted.get(source_id, ())

    def source_of(self, converted_id: str) -> Optional[str]:
        return self.to_source.get(converted_id)


def node_links(layer_map: Mapping, converted_graph) -> NodeLinks:
    """The links between the source graph and `converted_graph` (the package opened by importers)."""
    index = source_index(layer_map)
    to_converted: dict[str, list[str]] = {}
    to_source: dict[str, str] = {}
    for node in converted_graph.nodes:
        source = index.get(node.name) if node.name else None
        if source is None:
            source = index.get(node.id)
        if source is None:
            continue
        to_source[node.id] = source
        to_converted.setdefault(source, []).append(node.id)
    for member, owner in (layer_map.get("fused") or {}).items():
        if owner in to_converted and member not in to_converted:
            to_converted[member] = list(to_converted[owner])
    return NodeLinks({k: tuple(v) for k, v in to_converted.items()}, to_source)


# ----------------------------------------------------------------------------- building the map

def attribute_ops(coreml_graph, op_source: Mapping[str, str], node_of_prefix: Mapping[str, str]
                  ) -> dict[str, Optional[str]]:
    """Source node of every operation of the converted program (None: input/output plumbing).

    `coreml_graph` is the saved package re-opened by our Core ML importer (node.name is
    the MIL op name).  Names are looked up as built, then with the suffixes
    coremltools' passes append (fp16 casting) removed, then by their "prefix__role"
    form; casts coremltools inserts belong to the op whose output they convert, or
    to nobody at the program's inputs and outputs; image preprocessing belongs to nobody.
    """
    from engine.convert.naming import ROLE_SEPARATOR, strip_pass_suffixes

    producers = {out: node for node in coreml_graph.nodes for out in node.outputs}
    owner: dict[str, Optional[str]] = {}
    prefixes = sorted(node_of_prefix, key=len, reverse=True)
    for node in coreml_graph.nodes:
        name = node.name or node.id
        base = strip_pass_suffixes(name)
        source = op_source.get(name) or op_source.get(base)
        if source is None:
            # Some passes rename an op but keep its output name (transposes, casts): try those.
            for output in node.outputs:
                stripped = strip_pass_suffixes(output)
                source = op_source.get(stripped) or op_source.get(re.sub(r"_\d+$", "", stripped))
                if source is not None:
                    break
        if source is None and ROLE_SEPARATOR in base:
            source = node_of_prefix.get(base.split(ROLE_SEPARATOR, 1)[0])
        if source is None and node.op_type == "cast":
            data = node.inputs[0] if node.inputs else ""
            at_boundary = data in coreml_graph.inputs or any(o in coreml_graph.outputs for o in node.outputs)
            if not at_boundary and data in producers:
                producer = producers[data]
                source = owner.get(producer.name or producer.id)
            owner[name] = source
            continue
        if source is None and ROLE_SEPARATOR not in base:
            source = next((node_of_prefix[p] for p in prefixes if base.startswith(p + "_")), None)
        owner[name] = source
    # Ops a coremltools pass inserts in front of an op under generated names (from iOS 17,
    # guard_negative_gather_indices' greater_equal / add / select before a gather of run-time
    # indices: ONNX's negative indices) belong to the node of the op they all feed.
    consumers: dict[str, list] = {}
    for node in coreml_graph.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    for node in reversed(coreml_graph.nodes):  # consumers first: a chain of such ops resolves in one sweep
        name = node.name or node.id
        if owner.get(name) is not None or node.op_type == "cast" or ROLE_SEPARATOR in strip_pass_suffixes(name):
            continue
        fed = {owner.get(consumer.name or consumer.id) for output in node.outputs
               for consumer in consumers.get(output, ())}
        if len(fed) == 1 and None not in fed:
            owner[name] = fed.pop()
    return owner


def build_layer_map(*, source, built, coreml_graph, optimize: str, options: Mapping,
                    package_name: str, source_sha256: str) -> dict:
    from engine.convert.attribution import source_node_table

    owner = attribute_ops(coreml_graph, built.op_source, built.names.node_of_prefix)
    nodes: dict[str, list[str]] = {}
    for node in coreml_graph.nodes:
        name = node.name or node.id
        if owner.get(name) is not None:
            nodes.setdefault(owner[name], []).append(name)
    compute = [n for n in source.order if n.id not in source.folded]
    removed = dict(built.removed)
    fused: dict[str, str] = {}
    for node in compute:
        if node.id in nodes or node.id in removed:
            continue
        if optimize != "exact":
            target = _fusion_owner(node, source, nodes)
            if target is not None:
                fused[node.id] = target
                continue
        removed[node.id] = "optimised away by coremltools (a no-op here, or its result is unused)"
    if fused:
        _prefer_compute_owner(fused, nodes, source)
    source_of = {name: node_id for node_id, names in nodes.items() for name in names}
    mil_ops = {}
    for node in coreml_graph.nodes:
        name = node.name or node.id
        mil_ops[name] = {"type": node.op_type, "outputs": list(node.outputs), "source": source_of.get(name)}
    return {
        "schema": SCHEMA,
        "source_model": str(Path(source.path).resolve()),
        "source_sha256": source_sha256,
        "package": package_name,
        "options": dict(options),
        "nodes": {n.id: nodes[n.id] for n in compute if n.id in nodes},
        "folded": [n.id for n in source.order if n.id in source.folded],
        "folded_into": folded_into(source),
        "folded_op_types": {n.id: n.op_type for n in source.order if n.id in source.folded},
        "removed": [n.id for n in compute if n.id in removed],
        "removed_reasons": {n.id: removed[n.id] for n in compute if n.id in removed},
        "fused": {n.id: fused[n.id] for n in compute if n.id in fused},
        "mil_ops": mil_ops,
        "unattributed": [name for name, info in mil_ops.items() if info["source"] is None],
        "inputs": dict(built.input_names),
        "outputs": dict(built.output_names),
        # What an agent needs to key device results by source node without the ONNX file.
        "source_nodes": (source_node_table(source.analysis, [n.id for n in compute])
                         if source.analysis is not None else {}),
    }


def folded_into(source) -> dict[str, list[str]]:
    """Folded node -> the compute nodes that use its result (through other folded nodes).

    A folded node costs nothing at run time: its value is a constant of the MIL ops of the
    nodes that consume it, so that is where it belongs on the source graph (as deployed mode
    maps fused kernels).  A value used by nothing that runs maps to [].
    """
    consumers = source.graph.consumers()
    position = {node.id: index for index, node in enumerate(source.order)}
    reached: dict[str, set[str]] = {}
    for node in reversed(source.order):
        if node.id not in source.folded:
            continue
        targets: set[str] = set()
        for name in node.outputs:
            for consumer in consumers.get(name, []) if name else []:
                if consumer.id in source.folded:
                    targets |= reached.get(consumer.id, set())
                else:
                    targets.add(consumer.id)
        reached[node.id] = targets
    return {node.id: sorted(reached[node.id], key=lambda i: position.get(i, 0))
            for node in source.order if node.id in source.folded}


def _fusion_owner(node, source, nodes: Mapping[str, list]) -> Optional[str]:
    """The nearest node downstream (else upstream) that kept MIL ops: what this one was merged into."""
    consumers = source.graph.consumers()
    producers = source.graph.producers()
    for direction in ("down", "up"):
        frontier, seen = [node], {node.id}
        while frontier:
            following = []
            for current in frontier:
                if direction == "down":
                    neighbours = [c for out in current.outputs for c in consumers.get(out, ())]
                else:
                    neighbours = [producers[i] for i in current.inputs if i in producers]
                for neighbour in neighbours:
                    if neighbour.id in seen or neighbour.id in source.folded:
                        continue
                    if neighbour.id in nodes:
                        return neighbour.id
                    seen.add(neighbour.id)
                    following.append(neighbour)
            frontier = following
    return None


_HEAVY_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _prefer_compute_owner(fused: dict[str, str], nodes: dict[str, list[str]], source) -> None:
    """coremltools names a fused op after the last node it absorbed (conv+batchnorm -> the
    BatchNormalization's name); give the op to the convolution/matmul of the group instead,
    so that a measured time lands on the node that does the work."""
    groups: dict[str, list[str]] = {}
    for member, owner in fused.items():
        groups.setdefault(owner, []).append(member)
    position = {n.id: i for i, n in enumerate(source.order)}
    for owner, members in groups.items():
        if source.graph.node(owner).op_type in _HEAVY_OPS:
            continue
        heavy = sorted((m for m in members if source.graph.node(m).op_type in _HEAVY_OPS),
                       key=position.__getitem__)
        if not heavy:
            continue
        representative = heavy[0]
        nodes[representative] = nodes.pop(owner)
        for member in members + [owner]:
            if member != representative:
                fused[member] = representative
        del fused[representative]
