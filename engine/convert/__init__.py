"""ONNX -> Core ML ML Program conversion, with a layer map back to the source nodes.

    from engine.convert import convert, check_convertible
    result = convert("model.onnx", "model.mlpackage", precision="fp16", target="iOS16")
    result.layer_map["nodes"]["/encoder/block3/dw/Conv"]   # -> ["encoder_block3_dw_Conv"]
    result.verification["parameters"]["status"]             # "passed"

Steps: read the ONNX model with its weights and our IR of it (node ids, shapes,
constant nodes); check every node and collect *all* problems; fold constants;
build a MIL program one ONNX node at a time (MIL op names carry the node id);
run coremltools (fp16/fp32, deployment target, image input); save to a
temporary package; re-open it with our Core ML importer to read back the op
names, build the layer map and verify; only then move the package into place
and write the map beside it.  On any problem nothing is written.

Device results of a converted package go back onto the source graph with
`profile_on_source` (engine/convert/attribution.py); `report_blockers` lists, for the
bottleneck report, what keeps a model off Core ML.

coremltools is imported on first use, not when this package is imported.
See docs/conversion.md for the op coverage table.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from engine.convert.attribution import SourceNode, profile_on_source, source_segments
from engine.convert.layermap import (SCHEMA as LAYER_MAP_SCHEMA, LayerMapError, NodeLinks, layer_map_path,
                                     load_layer_map, node_links, sum_to_source, unattributed_total)

__all__ = ["convert", "check_convertible", "report_blockers", "ConversionError", "Blocker", "ConversionResult",
           "ImageInput",
           "FlexibleShape", "parse_shape_options",
           "load_layer_map", "sum_to_source", "unattributed_total", "layer_map_path", "LAYER_MAP_SCHEMA",
           "LayerMapError", "PRECISIONS", "OPTIMIZE_MODES", "DEPLOYMENT_TARGETS", "supported_ops",
           "node_links", "NodeLinks", "profile_on_source", "source_segments", "SourceNode"]

PRECISIONS = ("fp16", "fp32")
OPTIMIZE_MODES = ("exact", "default")
DEFAULT_TARGET = "iOS16"
# Minimum deployment targets ML Programs run on (coremltools' ct.target names; iOS26 needs coremltools 9).
DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15",
                      "tvOS15", "tvOS16", "tvOS17", "tvOS18", "watchOS8", "watchOS9", "watchOS10", "watchOS11")


@dataclass(frozen=True)
class Blocker:
    """One reason a model cannot be converted: which node (or input/output), its op, why."""

    node_id: str
    op_type: str
    reason: str
    # True when a conversion option resolves it (a free input size): the model itself can run.
    needs_option: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        if self.op_type.startswith("("):  # "(input)", "(option)": already in parentheses
            return f"{self.node_id} {self.op_type}: {self.reason}"
        return f"{self.node_id} ({self.op_type}): {self.reason}"


class ConversionError(Exception):
    """The model cannot be converted; `blockers` lists every problem found, not just the first."""

    def __init__(self, model_path: str, blockers: Sequence[Blocker], headline: str = ""):
        self.model_path = model_path
        self.blockers = list(blockers)
        count = len(self.blockers)
        headline = headline or (f"{count} unsupported node{'s' if count != 1 else ''}"
                                if all(b.op_type not in ("(input)", "(output)", "(option)")
                                       for b in self.blockers)
                                else f"{count} problem{'s' if count != 1 else ''}")
        listing = "; ".join(str(b) for b in self.blockers)
        super().__init__(f"{model_path}: cannot convert to Core ML: {headline}: {listing}")


@dataclass(frozen=True)
class ImageInput:
    """Make an input an image (camera frames): Core ML computes pixel * scale + bias per channel."""

    scale: float = 1.0
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)
    color_layout: str = "RGB"  # "RGB", "BGR" or "G" (grayscale)


@dataclass(frozen=True)
class FlexibleShape:
    """The sizes an input may take at run time: Core ML enumerated shapes or ranges.

    Enumerated: `FlexibleShape.enumerated([(1, 3, 224, 224), (1, 3, 320, 320)])` (the first is
    the default).  Ranged: `FlexibleShape.ranged([1, 3, (128, 512), (128, 512)], default=(1, 3, 256, 256))`
    (an int is a fixed axis; the default defaults to the lower bounds).  The program is built
    and checked at the default shape and checked again at every enumerated shape or at the
    range bounds.  Ops whose translation needs fixed sizes on a varying axis (Reshape, Flatten,
    Slice, Split there, resizing to fixed sizes, ...) are reported like unsupported ops.
    """

    shapes: tuple[tuple[int, ...], ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()
    default: Optional[tuple[int, ...]] = None

    @classmethod
    def enumerated(cls, shapes: Sequence[Sequence[int]], default: Optional[Sequence[int]] = None) -> "FlexibleShape":
        shapes = tuple(tuple(int(d) for d in shape) for shape in shapes)
        return cls(shapes=shapes, default=tuple(int(d) for d in default) if default else None)

    @classmethod
    def ranged(cls, dims: Sequence, default: Optional[Sequence[int]] = None) -> "FlexibleShape":
        ranges = tuple((int(d), int(d)) if isinstance(d, (int, np.integer)) else (int(d[0]), int(d[1]))
                       for d in dims)
        return cls(ranges=ranges, default=tuple(int(d) for d in default) if default else None)

    @property
    def default_shape(self) -> tuple[int, ...]:
        if self.default:
            return self.default
        return self.shapes[0] if self.shapes else tuple(low for low, _ in self.ranges)

    def probe_shapes(self) -> list[tuple[int, ...]]:
        """The other shapes the program is checked at: every enumerated shape, or the bounds."""
        candidates = list(self.shapes) if self.shapes else [tuple(lo for lo, _ in self.ranges),
                                                             tuple(hi for _, hi in self.ranges)]
        unique = []
        for shape in candidates:
            if shape != self.default_shape and shape not in unique:
                unique.append(shape)
        return unique

    def problems(self) -> list[str]:
        if bool(self.shapes) == bool(self.ranges):
            return ["give either enumerated shapes or ranges"]
        if self.shapes:
            ranks = {len(shape) for shape in self.shapes}
            if len(ranks) != 1:
                return ["enumerated shapes must all have the same rank"]
            if any(d <= 0 for shape in self.shapes for d in shape):
                return ["sizes must be positive"]
            if self.default and self.default not in self.shapes:
                return ["the default must be one of the enumerated shapes"]
        else:
            if any(low <= 0 or high < low for low, high in self.ranges):
                return ["each range needs 0 < lower <= upper (Core ML ML Programs need a finite upper bound)"]
            if self.default and (len(self.default) != len(self.ranges) or not all(
                    low <= d <= high for d, (low, high) in zip(self.default, self.ranges))):
                return ["the default must lie within the ranges"]
        return []

    def as_dict(self) -> dict:
        if self.shapes:
            return {"enumerated": [list(s) for s in self.shapes], "default": list(self.default_shape)}
        return {"ranges": [list(r) for r in self.ranges], "default": list(self.default_shape)}


def parse_shape_options(items: Optional[Sequence[str]]) -> tuple[dict[str, list[int]], dict[str, FlexibleShape]]:
    """CLI --shape values -> (fixed shapes, flexible shapes).

    NAME=1x3x224x224 fixes a shape; repeating NAME enumerates shapes (the first is the default);
    LOW:HIGH on an axis makes it a range, e.g. image=1x3x128:512x128:512 (default: the lower bounds).
    """
    fixed: dict[str, list[int]] = {}
    listed: dict[str, list[list]] = {}
    for item in items or ():
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            parsed = []
            for part in dims.lower().split("x"):
                if ":" in part:
                    low, high = (int(v) for v in part.split(":"))
                    parsed.append((low, high))
                else:
                    parsed.append(int(part))
            if any((d if isinstance(d, int) else min(d)) <= 0 for d in parsed):
                raise ValueError
        except ValueError:
            raise ValueError(f"--shape {item!r}: expected NAME=DIMS with positive sizes, e.g. input=1x3x224x224 "
                             "(LOW:HIGH for a range, repeat NAME to enumerate shapes)") from None
        listed.setdefault(name, []).append(parsed)
    flexible: dict[str, FlexibleShape] = {}
    for name, shapes in listed.items():
        ranged = any(isinstance(d, tuple) for shape in shapes for d in shape)
        if ranged and len(shapes) > 1:
            raise ValueError(f"--shape {name}: give either one shape with LOW:HIGH ranges or several fixed shapes")
        if ranged:
            flexible[name] = FlexibleShape.ranged(shapes[0])
        elif len(shapes) > 1:
            flexible[name] = FlexibleShape.enumerated(shapes)
        else:
            fixed[name] = shapes[0]
    return fixed, flexible


@dataclass
class ConversionResult:
    package_path: Path
    layer_map_path: Path
    layer_map: dict
    verification: dict[str, dict]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[str]:
        return [name for name, check in self.verification.items() if check["status"] == "failed"]

    @property
    def not_run_checks(self) -> list[str]:
        return [name for name, check in self.verification.items() if check["status"] == "not run"]

    @property
    def verified(self) -> bool:
        """True when no check failed.  Checks that did not run (Core ML's own outputs off macOS)
        are not failures, and not passes either: `verdict()` names them."""
        return not self.failed_checks

    def outcomes(self) -> dict[str, str]:
        """Each check as one string: "passed", "failed: why", "not run: needs macOS: ..."."""
        return {name: check["status"] if check["status"] == "passed" else f"{check['status']}: {check['detail']}"
                for name, check in self.verification.items()}

    def verdict(self) -> str:
        """One line saying what was checked by value and how, e.g. "values: weights equal (146 tensors);
        outputs on the MIL reference evaluator within 2.3e-06 (relative) of ONNX Runtime, 92
        intermediates compared; not run on Core ML"."""
        checks = self.verification
        parts = []
        weights, values = checks.get("weights", {}), checks.get("values", {})
        if weights.get("status") == "passed":
            parts.append(f"weights equal ({weights.get('compared', 0)} tensors)")
        elif weights:
            parts.append(f"weights {weights['status']}")
        if values.get("status") == "passed":
            worst = max((e["max_rel_error"] for e in values.get("outputs", {}).values()), default=0.0)
            parts.append(f"outputs on the MIL reference evaluator within {worst:.2g} (relative) of "
                         f"{values.get('reference', 'ONNX Runtime')}, {values.get('compared_tensors', 0)} "
                         "intermediates compared")
        elif values.get("status") == "failed":
            first = values.get("first_departure") or {}
            parts.append(f"values differ from {values.get('reference', 'ONNX Runtime')} on the MIL reference "
                         "evaluator, first at "
                         f"{first.get('node', '?')}")
        elif values:
            parts.append("outputs not run on the MIL reference evaluator")
        coreml = checks.get("coreml", {})
        if coreml.get("status") == "passed":
            parts.append("outputs checked on Core ML")
        elif coreml.get("status") == "failed":
            parts.append("Core ML outputs differ")
        elif coreml:
            parts.append("not run on Core ML")
        return "values: " + "; ".join(parts)

    def folded_summary(self) -> str:
        """What was evaluated at conversion time, by op type ("" when nothing was), e.g.
        "folded 16 constant nodes (4 Shape, 8 Gather, 4 Concat) into 6 nodes that use them"."""
        folded = self.layer_map.get("folded", [])
        if not folded:
            return ""
        op_types = self.layer_map.get("folded_op_types", {})
        counts = Counter(op_types.get(node_id, "?") for node_id in folded)
        users = {user for targets in self.layer_map.get("folded_into", {}).values() for user in targets}
        listed = ", ".join(f"{count} {op_type}" for op_type, count in counts.most_common())
        return f"folded {len(folded)} constant nodes ({listed}) into the {len(users)} nodes that use them"

    def assumption_lines(self) -> list[str]:
        """What the conversion assumed about its inputs (--assume-full-attention-mask), one line each."""
        return [f"assumed input '{a['input']}' {a['value']} {'x'.join(map(str, a['shape']))}: {a['meaning']}; "
                f"the program has no such input; {len(a['folded_nodes'])} nodes computed from it folded"
                + (f" ({', '.join(a['folded_nodes'][:4])}{', ...' if len(a['folded_nodes']) > 4 else ''})"
                   if a["folded_nodes"] else "")
                for a in self.layer_map.get("assumptions", ())]

    def summary_lines(self) -> list[str]:
        return [f"{name:15s} {check['status']:7s} {check['detail']}" for name, check in self.verification.items()]


def supported_ops() -> list[str]:
    from engine.convert import ops
    return ops.supported_op_types()


# ----------------------------------------------------------------------------- checking

def _collect_blockers(source, image_inputs: Mapping[str, ImageInput], evaluate_constants: bool = True
                      ) -> list[Blocker]:
    from engine.convert import ops
    from engine.convert.source import FoldError

    graph = source.graph
    blockers: list[Blocker] = []
    for name in graph.inputs:
        value_type = graph.value_type(name)
        if value_type is None or not value_type.is_static:
            shape = value_type.shape_text() if value_type is not None else "?"
            blockers.append(Blocker(name, "(input)", f"shape {shape} is not fixed; give one with "
                                                     f"--shape {name}=1x3x224x224 (dimensions as the model needs)",
                                    needs_option=True))
        elif value_type.dtype not in ("float32", "float16", "float64", "int32", "int64"):
            blockers.append(Blocker(name, "(input)", f"{value_type.dtype} inputs are not supported"))
    # A constant graph output (a Shape of a fixed-size input) is carried by an identity op
    # (builder._bind_constant_output); its value must be computable.
    for name in graph.outputs:
        if evaluate_constants and source.is_constant(name):
            try:
                source.constant(name)
            except FoldError as exc:
                blockers.append(Blocker(name, "(output)", f"the output is the constant result of {exc.node_id} "
                                                          f"({exc.op_type}), which {exc.reason}"))
    for name, image in image_inputs.items():
        if name not in graph.inputs:
            blockers.append(Blocker(name, "(option)", f"--image-input names '{name}', but the model's inputs "
                                                      f"are: {', '.join(graph.inputs)}"))
            continue
        value_type = graph.value_type(name)
        channels = 1 if image.color_layout == "G" else 3
        if image.color_layout not in ("RGB", "BGR", "G"):
            blockers.append(Blocker(name, "(option)", f"color layout {image.color_layout!r} (RGB, BGR or G)"))
        elif value_type is not None and value_type.shape is not None and (
                len(value_type.shape) != 4 or value_type.shape[0] != 1 or value_type.shape[1] != channels):
            blockers.append(Blocker(name, "(option)", f"an image input must be 1x{channels}xHxW; this one is "
                                                      f"{value_type.shape_text()}"))
        elif len(image.bias) != channels:
            blockers.append(Blocker(name, "(option)", f"the bias needs {channels} value(s), got {len(image.bias)}"))
    for node in source.order:
        if node.id in source.folded:
            if node.op_type in ("Shape", "Size") and node.inputs and source.flexible.get(node.inputs[0]):
                blockers.append(Blocker(node.id, node.op_type, "reads the size of a tensor whose size varies "
                                                               "(flexible input shapes): it would be computed at "
                                                               "run time, which is not supported"))
            continue
        definition = ops.lookup(node)
        if definition is None and node.domain not in ("", "ai.onnx"):
            blockers.append(Blocker(node.id, node.op_type, f"custom op of domain '{node.domain}' has no Core ML "
                                                           "translation"))
            continue
        if node.op_type in ops.FOLD_ONLY:
            blockers.append(Blocker(node.id, node.op_type, ops.FOLD_ONLY[node.op_type]))
            continue
        if definition is None:
            blockers.append(Blocker(node.id, node.op_type, "no Core ML translation for this op"))
            continue
        ctx = ops.NodeContext(node, source)
        try:
            reasons = definition.check(ctx) + ops.flexible_problems(ctx)
            for name in node.outputs:
                value_type = graph.value_type(name) if name else None
                if value_type is not None and value_type.rank is not None and value_type.rank > 5:
                    reasons.append(f"output '{name}' has rank {value_type.rank}; Core ML tensors have at most 5")
            if evaluate_constants and not reasons:
                for name in node.inputs:
                    if name and source.is_constant(name):
                        source.constant(name)
        except FoldError as exc:
            reasons = [f"reads {exc.node_id} ({exc.op_type}), which {exc.reason}"]
        except Exception as exc:  # a check tripping over an odd model: report, do not crash
            reasons = [f"could not be checked ({type(exc).__name__}: {exc})"]
        blockers.extend(Blocker(node.id, node.op_type, reason) for reason in reasons)
    return blockers


def check_convertible(model_path: str | os.PathLike,
                      input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                      image_inputs: Optional[Mapping[str, ImageInput]] = None,
                      flexible_shapes: Optional[Mapping[str, FlexibleShape]] = None,
                      target: str = "iOS16", assume_full_attention_mask: bool | str = False) -> list[Blocker]:
    """Everything that stops this ONNX model from converting to Core ML ([] when nothing does).

    For the bottleneck report ("cannot run on Core ML: 3 nodes").  Reads the weights
    (constants must be evaluable), builds nothing, writes nothing.  An unreadable file
    raises engine.ir.ModelLoadError.
    """
    flexible = dict(flexible_shapes or {})
    problems = _flexible_option_problems(flexible, input_shapes or {})
    if problems:
        return problems
    source = _load(Path(model_path), input_shapes, flexible, assume_full_attention_mask)
    source.target = target
    return _assumption_blockers(source) + _collect_blockers(source, dict(image_inputs or {}))


def report_blockers(model_path: str | os.PathLike,
                    input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> list[dict]:
    """What keeps a profiled model off Core ML, as the bottleneck report lists it.

    [{"node_id", "op_type", "reason"}, ...] for an ONNX model (`check_convertible` at
    `input_shapes`: pass the profile's settings["input_shapes"], the sizes it ran at),
    leaving out what a conversion option resolves (a free input size); [] for Core ML
    models and when everything converts.  With input sizes still free, only ops that have
    no Core ML translation at any size are listed.  An unreadable file raises
    engine.ir.ModelLoadError.
    """
    from importers import importer_for

    path = Path(model_path)
    if not path.exists():
        from engine.ir import ModelLoadError
        raise ModelLoadError(str(path), "no such file or directory")
    if importer_for(path).FORMAT != "onnx":
        return []
    from engine.convert import ops

    shapes = {str(k): [int(d) for d in v] for k, v in (input_shapes or {}).items()}
    blockers = check_convertible(path, input_shapes=shapes or None)
    if any(b.needs_option for b in blockers):
        # Input sizes still free: checks that need sizes say "not known statically" everywhere;
        # only ops Core ML cannot run at any size are certain.
        blockers = [b for b in blockers if not b.op_type.startswith("(") and b.op_type not in ops.FOLD_ONLY
                    and not any(b.op_type in table for table in ops.DOMAIN_OPS.values())]
    return [{"node_id": b.node_id, "op_type": b.op_type, "reason": b.reason}
            for b in blockers if not b.needs_option and b.op_type != "(option)"]


def _flexible_option_problems(flexible: Mapping[str, FlexibleShape], input_shapes: Mapping) -> list[Blocker]:
    problems = []
    for name, shape in flexible.items():
        if name in input_shapes:
            problems.append(Blocker(name, "(option)", "has both a fixed and a flexible shape"))
        problems.extend(Blocker(name, "(option)", f"flexible shape: {reason}") for reason in shape.problems())
    return problems


def _load(model_path: Path, input_shapes, flexible: Mapping[str, FlexibleShape],
          assume_full_attention_mask: bool | str = False, ignore_memory_check: bool = False):
    """The source at the default shapes, with probe graphs at the other flexible shapes."""
    from engine.convert.source import load_source

    shapes = {name: list(v) for name, v in (input_shapes or {}).items()}
    shapes.update({name: list(f.default_shape) for name, f in flexible.items()})
    probes = [{name: shape} for name, f in flexible.items() for shape in f.probe_shapes()]
    return load_source(model_path, shapes, probe_shapes=probes,
                       full_attention_mask=_attention_mask_name(assume_full_attention_mask),
                       ignore_memory_check=ignore_memory_check)


# The input onnxruntime-genai and Optimum exports name the attention mask.
ATTENTION_MASK_INPUT = "attention_mask"


def _attention_mask_name(option: bool | str) -> Optional[str]:
    if option is True:
        return ATTENTION_MASK_INPUT
    return option or None


def _assumption_blockers(source) -> list[Blocker]:
    return [Blocker("assume_full_attention_mask", "(option)", f"--assume-full-attention-mask: {problem}")
            for problem in source.assumption_problems]


# ----------------------------------------------------------------------------- converting

def convert(model_path: str | os.PathLike, output_path: str | os.PathLike, *, precision: str = "fp16",
            target: str = DEFAULT_TARGET, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
            image_inputs: Optional[Mapping[str, ImageInput]] = None, optimize: str = "exact",
            flexible_shapes: Optional[Mapping[str, FlexibleShape]] = None,
            progress: Optional[Callable[[str], None]] = None, value_checks: bool = True,
            kv_state: bool = False, assume_full_attention_mask: bool | str = False,
            ignore_memory_check: bool = False) -> ConversionResult:
    """Convert an ONNX model to an ML Program package and write its layer map beside it.

    precision: "fp16" (Core ML's default) or "fp32".  target: minimum deployment target
    ("iOS15".."iOS18", "macOS12".."macOS15", ...).  input_shapes: fixed shapes for free
    dimensions.  flexible_shapes: inputs whose size varies at run time (enumerated shapes or
    ranges, see FlexibleShape).  image_inputs: inputs to expose as images with scale/bias.  optimize:
    "exact" (default; no cross-node fusion, one source node per MIL op) or "default"
    (coremltools' full pipeline; fused nodes are recorded in the map).  value_checks: compare the
    package's weights with the source's and run it on the MIL reference evaluator against ONNX
    Runtime (engine/convert/values.py; False leaves those checks "not run").  kv_state: hold
    the KV cache (past_key... inputs with their present_key... outputs) as Core ML state
    (iOS18 or later targets; engine/convert/kv_state.py says what one call then computes).
    assume_full_attention_mask: True (the input "attention_mask") or an input name: take that
    input as all ones, i.e. every row of the batch attends to its whole sequence, no padding,
    so that what the model computes from it (GroupQueryAttention's seqlens_k and total length in
    onnxruntime-genai exports) folds to constants; the program then has no such input, and
    the layer map records the assumption ("assumptions") with the nodes it folded.
    ignore_memory_check: convert a model whose weights kept outside its file exceed the free
    memory (engine.free_memory) instead of refusing it; the result's warnings say so.

    Raises ConversionError listing every problem (nothing is written then) and
    engine.ir.ModelLoadError for files that cannot be read.
    """
    from engine.convert import builder
    from engine.convert.layermap import build_layer_map, write_layer_map
    from engine.convert.verify import run_checks

    model_path, package_path = Path(model_path), Path(output_path)
    report = progress or (lambda message: None)
    image_inputs = dict(image_inputs or {})
    option_problems = []
    if precision not in PRECISIONS:
        option_problems.append(Blocker("precision", "(option)", f"{precision!r} is not one of {', '.join(PRECISIONS)}"))
    if optimize not in OPTIMIZE_MODES:
        option_problems.append(Blocker("optimize", "(option)", f"{optimize!r} is not one of {', '.join(OPTIMIZE_MODES)}"))
    if package_path.suffix != ".mlpackage":
        option_problems.append(Blocker(str(package_path), "(option)", "the output must end in .mlpackage"))
    elif package_path.exists() and not (package_path / "Manifest.json").is_file():
        option_problems.append(Blocker(str(package_path), "(option)", "exists and is not an .mlpackage; "
                                                                      "refusing to replace it"))
    flexible = dict(flexible_shapes or {})
    option_problems += _flexible_option_problems(flexible, input_shapes or {})
    if not option_problems:
        try:
            builder.mil_target(target)
        except ValueError as exc:
            option_problems.append(Blocker("target", "(option)", str(exc)))
    if option_problems:
        raise ConversionError(str(model_path), option_problems)

    timings: dict[str, float] = {}
    started = time.perf_counter()
    report(f"reading {model_path.name}")
    source = _load(model_path, input_shapes, flexible, assume_full_attention_mask, ignore_memory_check)
    source.target = target
    timings["read"] = time.perf_counter() - started

    mark = time.perf_counter()
    compute_count = sum(1 for n in source.order if n.id not in source.folded)
    report(f"checking {compute_count} compute nodes ({len(source.folded)} constant nodes to fold)")
    blockers = _assumption_blockers(source) + _collect_blockers(source, image_inputs)
    kv_pairs = []
    if kv_state:
        from engine.convert import kv_state as kv_state_module
        blockers += [Blocker("--kv-state", "(option)", problem)
                     for problem in kv_state_module.option_problems(source.graph, target)]
        kv_pairs = kv_state_module.find_pairs(source.graph)
        blockers += [Blocker(pair.past, "(option)", "--kv-state: a flexible shape on a KV cache input; "
                                                     "Core ML states have fixed shapes")
                     for pair in kv_pairs if pair.past in flexible]
    if blockers:
        raise ConversionError(str(model_path), blockers)
    timings["check_and_fold"] = time.perf_counter() - mark

    mark = time.perf_counter()
    try:
        # optimize="default" is coremltools' own flow: fp32 program, its passes, then its fp16 pass
        # (some of its fusions assume fp32 operands).  "exact" builds in the final precision.
        build_precision = precision if optimize == "exact" else "fp32"
        built = builder.build_program(source, target, build_precision, report, kv_pairs=kv_pairs)
    except Exception as exc:  # a translation failing on a case its check allowed: name the node
        raise ConversionError(str(model_path), [_build_failure(exc, source)],
                              headline="the converter failed on a node it accepted") from exc
    # Flexible inputs: build again at the default and at every probe shape, with the same
    # (flexible) translations, and compare those programs' shapes with ONNX's at that size.
    probes = ([({n: tuple(source.graph.value_type(n).shape) for n in flexible}, source.graph)] + source.probes
              if flexible else [])
    for probe in probes:
        report(f"checking the program at input shape {', '.join(f'{n}={list(v)}' for n, v in probe[0].items())}")
        try:
            probe_check = builder.build_program(source, target, build_precision, None, probe=probe,
                                                kv_pairs=kv_pairs).shape_check
        except Exception as exc:
            raise ConversionError(str(model_path), [_build_failure(exc, source)],
                                  headline=f"the converter failed at input shape {probe[0]}") from exc
        built.shape_check.mismatches.extend(probe_check.mismatches)
        built.shape_check.probes_checked += 1
    if built.shape_check.mismatches:
        raise ConversionError(str(model_path), [
            Blocker(node_id, source.graph.node(node_id).op_type,
                    f"converter error: tensor '{tensor}' is {mil} in the MIL program, {onnx_type} in ONNX")
            for node_id, tensor, onnx_type, mil in built.shape_check.mismatches],
            headline="the converted program's shapes differ from ONNX's")
    timings["build"] = time.perf_counter() - mark

    mark = time.perf_counter()
    report(f"running coremltools ({precision}, {target}, optimize={optimize})")
    input_types = _input_types(built, source, image_inputs, flexible)
    try:
        mlmodel, ct_warnings = builder.run_coremltools(built, target, input_types, optimize,
                                                       skip_model_load=sys.platform != "darwin",
                                                       fp16_pass=optimize != "exact" and precision == "fp16")
    except Exception as exc:  # a coremltools pass or check failing on the program we built
        raise ConversionError(str(model_path), [Blocker("(program)", "(coremltools)",
                                                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")],
                              headline="coremltools rejected the converted program") from exc
    source.release_constants()
    layer_map_file = layer_map_path(package_path)
    source_sha256 = _sha256(model_path)
    mlmodel.short_description = f"Converted from {model_path.name} by LayerScope"
    mlmodel.user_defined_metadata["com.layerscope.source_model"] = model_path.name
    mlmodel.user_defined_metadata["com.layerscope.source_sha256"] = source_sha256
    mlmodel.user_defined_metadata["com.layerscope.layermap"] = layer_map_file.name
    timings["coremltools"] = time.perf_counter() - mark

    # Everything is written under staging names beside the output and moved into place only
    # when the package has re-opened and the layer map is built: a failure leaves nothing.
    mark = time.perf_counter()
    package_path.parent.mkdir(parents=True, exist_ok=True)
    staging = package_path.with_name(f".{package_path.stem}.partial-{os.getpid()}.mlpackage")
    staging_map = layer_map_file.with_name(f".{layer_map_file.name}.partial-{os.getpid()}")
    try:
        if staging.exists():
            shutil.rmtree(staging)
        report(f"saving {package_path.name}")
        mlmodel.save(str(staging))
        del mlmodel
        timings["save"] = time.perf_counter() - mark

        mark = time.perf_counter()
        report("verifying (re-import, shapes, layers, parameters, layer map)")
        from engine.convert.layermap import attribute_ops
        from engine.ir import ModelLoadError
        from importers import open_model
        try:
            coreml_model = open_model(staging)
        except ModelLoadError as exc:
            raise ConversionError(str(model_path), [Blocker(str(package_path), "(output)",
                                                            f"the saved package does not re-open: {exc.problem}")],
                                  headline="coremltools wrote a package LayerScope cannot read") from exc
        options = {"precision": precision, "target": target, "optimize": optimize,
                   "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
                   "flexible_shapes": {k: v.as_dict() for k, v in flexible.items()},
                   "image_inputs": {k: {"scale": v.scale, "bias": list(v.bias), "color_layout": v.color_layout}
                                    for k, v in image_inputs.items()},
                   "kv_state": kv_state,
                   "assume_full_attention_mask": _attention_mask_name(assume_full_attention_mask)}
        owner = attribute_ops(coreml_model.main_graph, built.op_source, built.names.node_of_prefix)
        layer_map = build_layer_map(source=source, built=built, coreml_graph=coreml_model.main_graph,
                                    optimize=optimize, options=options, package_name=package_path.name,
                                    source_sha256=source_sha256)
        if built.states:
            layer_map["kv_state"] = [pair.as_dict(name) for name, pair in built.states.items()]
        if source.assumed_inputs:
            layer_map["assumptions"] = list(source.assumed_inputs.values())
        program = None
        if value_checks:
            from engine.convert.mil_reference import load_program
            from engine.convert.values import tensor_map
            report("reading the saved program back (weights from the package)")
            program = load_program(staging)
            # optimize="default" merges nodes (conv+batchnorm...): a node's result no longer
            # exists in the program, so only the outputs are compared then.
            layer_map["tensors"] = tensor_map(built, program, layer_map) if optimize == "exact" else {}
            report("checking weights and values (MIL reference evaluator against ONNX Runtime)")
        verification = run_checks(source=source, built=built, coreml_model=coreml_model, layer_map=layer_map,
                                  owner=owner, precision=precision, optimize=optimize, package_path=staging,
                                  image_inputs=image_inputs, program=program, value_checks=value_checks)
        del program
        timings["verify"] = time.perf_counter() - mark
        write_layer_map(layer_map, staging_map)
        if package_path.exists():
            shutil.rmtree(package_path)
        os.replace(staging, package_path)
        os.replace(staging_map, layer_map_file)
    finally:
        for leftover in (staging, staging_map):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                leftover.unlink()
    timings["total"] = time.perf_counter() - started
    report(f"wrote {package_path} and {layer_map_file.name} in {timings['total']:.1f} s")
    return ConversionResult(package_path, layer_map_file, layer_map, verification, timings,
                            source.load_warnings + list(source.model.warnings) + ct_warnings)


def _build_failure(exc: Exception, source) -> Blocker:
    node_id = getattr(exc, "node_id", None)
    # The traceback's innermost NodeContext names the node being built.
    tb = exc.__traceback__
    while tb is not None:
        ctx = tb.tb_frame.f_locals.get("ctx")
        if ctx is not None and hasattr(ctx, "node"):
            node_id = ctx.node.id
        tb = tb.tb_next
    if node_id is None:
        return Blocker("(program)", "(build)", f"{type(exc).__name__}: {exc}")
    node = source.graph.node(node_id)
    return Blocker(node_id, node.op_type, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _input_types(built, source, image_inputs: Mapping[str, ImageInput],
                 flexible: Mapping[str, FlexibleShape]) -> list:
    if not image_inputs and not flexible:
        return []
    import coremltools as ct

    layouts = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "G": ct.colorlayout.GRAYSCALE}
    types = []
    for onnx_name, mil_name in built.input_names.items():
        shape = tuple(source.graph.value_type(onnx_name).shape)
        if onnx_name in flexible:
            spec = flexible[onnx_name]
            if spec.shapes:
                shape = ct.EnumeratedShapes(shapes=[list(s) for s in spec.shapes], default=list(spec.default_shape))
            else:
                shape = ct.Shape(shape=[low if low == high else ct.RangeDim(lower_bound=low, upper_bound=high,
                                                                            default=d)
                                        for (low, high), d in zip(spec.ranges, spec.default_shape)])
        image = image_inputs.get(onnx_name)
        if image is None:
            types.append(ct.TensorType(name=mil_name, shape=shape))
        else:
            bias = list(image.bias) if image.color_layout != "G" else float(image.bias[0])
            types.append(ct.ImageType(name=mil_name, shape=shape, scale=float(image.scale), bias=bias,
                                      color_layout=layouts[image.color_layout], channel_first=True))
    return types


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
