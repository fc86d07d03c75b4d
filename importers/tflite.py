"""TFLite / LiteRT `.tflite` importer (work in progress: the node id contract comes first).

NODE ID CONTRACT: an operator is identified by its index in its subgraph.  Every operator
node of the IR carries `operator_node_id(subgraph_index, operator_index)`; the LiteRT host
target and the Android target key their timings by the same ids, so their profiles paint
onto the graph and export as Model Explorer node data keyed by operator index.
"""
from __future__ import annotations


def operator_node_id(subgraph_index: int, operator_index: int) -> str:
    """The IR node id of operator `operator_index` in subgraph `subgraph_index`.

    Subgraph 0 (the main graph) uses the bare operator index ("12"), as LiteRT's profilers
    and benchmark_model name operators; other subgraphs (while/if bodies) are prefixed
    ("2/12") so ids stay unique across the whole model.
    """
    if subgraph_index == 0:
        return str(operator_index)
    return f"{subgraph_index}/{operator_index}"
