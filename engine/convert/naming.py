"""MIL names derived from ONNX node ids, so every MIL op can be traced to its source node.

Each source node gets a *prefix*: its id made into an identifier (letters,
digits and single underscores; "/encoder/block3/dw/Conv" ->
"encoder_block3_dw_Conv"), made unique.  The op that produces the node's
result is named exactly the prefix; helper ops are named "prefix__role".  A
prefix never contains "__", so the part before the first "__" of a name is
always a prefix.  Graph inputs and outputs keep their ONNX names, made into
identifiers the same way (Core ML feature names must be identifiers).
"""
from __future__ import annotations

import re
from typing import Iterable

ROLE_SEPARATOR = "__"
# Suffixes coremltools passes append to op names they rewrite (fp16 casting, conv_transpose
# getting an explicit output_shape).
PASS_SUFFIXES = ("_cast_fp16", "_cast_fp32", "_cast_int16", "_cast_uint16", "_has_output_shape")


def identifier(text: str, fallback: str = "n") -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    name = re.sub(r"_+", "_", name).strip("_")
    if not name:
        name = fallback
    if not (name[0].isalpha()):
        name = f"{fallback}_{name}"
    return name


class NameTable:
    """Unique prefixes per node id and identifiers for graph inputs/outputs."""

    def __init__(self, reserved: Iterable[str] = ()):
        self._used: set[str] = set(reserved)
        self.prefix_of: dict[str, str] = {}  # node id -> prefix
        self.node_of_prefix: dict[str, str] = {}  # prefix -> node id

    def reserve(self, text: str) -> str:
        """A unique identifier for a graph input or output name."""
        name = self._unique(identifier(text, "t"))
        return name

    def prefix(self, node_id: str) -> str:
        if node_id not in self.prefix_of:
            prefix = self._unique(identifier(node_id))
            self.prefix_of[node_id] = prefix
            self.node_of_prefix[prefix] = node_id
        return self.prefix_of[node_id]

    def _unique(self, base: str) -> str:
        candidate, k = base, 1
        while candidate in self._used:
            k += 1
            candidate = f"{base}_{k}"
        self._used.add(candidate)
        return candidate


# Prefixes coremltools passes put before the names of ops they replace (`divide_to_multiply`
# turns real_div by a constant into mul, named "_inversed_<name>").
PASS_PREFIXES = ("_inversed_",)


def strip_pass_suffixes(name: str) -> str:
    for prefix in PASS_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    changed = True
    while changed:
        changed = False
        for suffix in PASS_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name
