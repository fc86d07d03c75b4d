"""Names a person recognises for layers, wherever a report, a hint or the CLI names one.

A node with a name in the model file is shown by that name and its op
("conv3 · Conv"; "/encoder/block3/conv/Conv" already says its op).  A node without one (the onnx light zoo,
many exporters) has only an internal id such as `Conv_96`, which no one can find
again; it is shown as a readable path instead: stage / namespace / op #k, where k
counts the nodes of that op in that stage and namespace in execution order
("decoder / ConvTranspose #2").  So is a node whose name only numbers it
("n96", the onnx light zoo): "encoder / Conv #12 (n96)", the file's name kept
to find it in other tools.  The same rule applies with or without the model
file, so a profile read back alone names its layers the same way.

    layer_names(analysis)          -> {node id: label}   (every node of the graph)
    layer_names_for_profile(profile) -> {node id: label} (from the profile alone)
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

SEPARATOR = " · "


def _path_label(stage: str, namespace: str, op_type: str, index: int) -> str:
    parts = [p for p in (stage, namespace) if p]
    return " / ".join(parts + [f"{op_type} #{index}"])


# Names that only number nodes ("n96", "node_12", "45", "Conv_3"): a person cannot place them, so such a
# node is named by its path like an unnamed one, with the file's name after it to find it in other tools.
_NUMBERING_NAME = re.compile(r"^[A-Za-z]{0,4}[_:.]?\d+$")


def is_numbering_name(name: str, op_type: str = "") -> bool:
    return bool(_NUMBERING_NAME.match(name)) or (bool(op_type) and is_generated_id(name, op_type))


def _counted_labels(rows: Iterable[tuple[str, Optional[str], str, str, str]]) -> dict[str, str]:
    """rows: (node id, name or None, op type, stage, namespace) in execution order."""
    counts: dict[tuple[str, str, str], int] = {}
    labels: dict[str, str] = {}
    for node_id, name, op_type, stage, namespace in rows:
        if name and is_numbering_name(name, op_type):
            key = (stage, namespace, op_type)
            counts[key] = counts.get(key, 0) + 1
            labels[node_id] = f"{_path_label(stage, namespace, op_type, counts[key])} ({name})"
            continue
        if name:
            # "/encoder/stem/conv/Conv" already says its op
            says_op = name == op_type or name.endswith("/" + op_type)
            labels[node_id] = name if says_op else f"{name}{SEPARATOR}{op_type}"
            continue
        key = (stage, namespace, op_type)
        counts[key] = counts.get(key, 0) + 1
        labels[node_id] = _path_label(stage, namespace, op_type, counts[key])
    return labels


def layer_names(analysis: "ModelAnalysis") -> dict[str, str]:
    """A readable label for every node of the analysed graph (folded constants are not counted in k)."""
    graph, metrics = analysis.graph, analysis.nodes

    def rows():
        for node_id in analysis.order:
            node = graph.nodes_by_id[node_id]
            m = metrics[node_id]
            if m.is_constant and not node.name:
                continue  # not a layer that runs; labelled below without taking a number
            yield node_id, node.name or None, node.op_type, m.stage, node.namespace

    labels = _counted_labels(rows())
    for node_id in analysis.order:
        if node_id not in labels:
            node = graph.nodes_by_id[node_id]
            labels[node_id] = _path_label(metrics[node_id].stage, node.namespace, node.op_type, 0).replace(
                " #0", " (constant)")
    return labels


# An importer gives an unnamed node the id OP_INDEX (importers/onnx.py), possibly with "#n" for a clash.
_GENERATED_ID = re.compile(r"^(?P<op>[A-Za-z0-9_.]+?)_\d+(#\d+)?$")


def is_generated_id(node_id: str, op_type: str) -> bool:
    match = _GENERATED_ID.match(node_id)
    return match is not None and match.group("op") == op_type


def layer_names_for_profile(profile: "Profile") -> dict[str, str]:
    """Labels from a profile without its model: the same as `layer_names` for the nodes that ran.

    A profile keeps ids, op types and stages; a named node's id is its name, an
    unnamed node's id is generated from its op (`Conv_96`) and gets a path
    instead.  Namespaces come from names, so unnamed nodes have none either way.
    """
    def rows():
        for node_id, timing in profile.nodes.items():
            name = None if is_generated_id(node_id, timing.op_type) else node_id
            namespace = ""
            yield node_id, name, timing.op_type, timing.stage, namespace
    return _counted_labels(rows())


def label_or_id(names: Optional[dict[str, str]], node_id: str) -> str:
    return names.get(node_id, node_id) if names else node_id
