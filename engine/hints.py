"""Bottleneck hints: rules that read a profile and the static analysis and say what to try.

Each hint names the nodes it concerns and why, with the measured figures
behind it.  Rules are deliberately few and conservative: a hint that fires on
every model teaches people to ignore hints.

    find_hints(profile, analysis) -> list[dict]
        # {rule, severity, message, evidence, guidance, node_ids, time_ms, share, kind}

`message` says what was found and what to try; `evidence` states the figures
of this profile behind it (with the runs they come from), so a reader can
judge it; `guidance` is what the rule knows about other hardware or in general,
which this profile did not measure (e.g. depthwise convolutions are cheap on a
phone's GPU): it is marked as such wherever it is shown, and repeated at the
end of `message` with that mark for readers that show only the message.
Layers are named as people recognise them (engine.naming), never by bare id.

A hint's `kind` is the weakest kind of the figures it uses (`hint_kind`).

Thresholds are module constants so a test (or a person) can see them.
"""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Optional

from engine.analysis import costs
from engine.naming import layer_names
from engine.profile import ESTIMATED, combine_kinds

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

# A ConvTranspose share of the decoder's time above this fires "convtranspose_decoder".
CONVTRANSPOSE_DECODER_SHARE = 0.30
# Depthwise convolutions above this share of the whole run fire "depthwise_cpu" on a CPU target.
DEPTHWISE_SHARE = 0.25
# A layer taking at least this share of the time and this many times the model's median
# milliseconds per MAC fires "low_efficiency".
LOW_EFFICIENCY_MIN_SHARE = 0.01
LOW_EFFICIENCY_FACTOR = 3.0
# A layer taking at least this share of the time at an arithmetic intensity below
# this many FLOPs per byte fires "memory_bound".
MEMORY_BOUND_MIN_SHARE = 0.02
MEMORY_BOUND_INTENSITY = 1.0
# QUANTIZE/DEQUANTIZE operators above this share of the time fire "dequantize_chain" (TFLite).
DEQUANTIZE_SHARE = 0.05
# BatchNorm folding is worth saying when the BatchNorms take at least this share.
BATCHNORM_MIN_SHARE = 0.005

_FOLDABLE_PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# Rules that judge layers by figures counted from shapes (MACs, FLOPs per byte): their hints are estimated.
RULES_ON_STATIC_FIGURES = ("low_efficiency", "memory_bound")


def _severity(share: float) -> str:
    return "high" if share >= 0.20 else "medium" if share >= 0.05 else "low"


def _layers(count: int, noun: str = "layer") -> str:
    """3 -> "3 layers", 1 -> "1 layer"."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


GUIDANCE_MARK = "General guidance, not measured by this profile: "


def _hint(rule: str, share: float, message: str, node_ids, time_ms: float, evidence: str,
          guidance: str = "") -> dict:
    full_message = f"{message} {GUIDANCE_MARK}{guidance}" if guidance else message
    return {"rule": rule, "severity": _severity(share), "message": full_message, "evidence": evidence,
            "guidance": guidance, "node_ids": list(node_ids), "time_ms": round(time_ms, 6),
            "share": round(share, 6)}


def finding(hint: dict) -> str:
    """A hint's message without its general guidance (for views that show the guidance apart)."""
    message, guidance = str(hint.get("message", "")), str(hint.get("guidance") or "")
    return message.replace(f" {GUIDANCE_MARK}{guidance}", "") if guidance else message


def _evidence(profile: "Profile", what: str, time_ms: float, total_ms: float) -> str:
    """'BatchNorm layers: 0.123 ms, 4.5 % of the summed layer medians (20 runs, cpu, exact mode)'."""
    return (f"{what}: {time_ms:.3f} ms, {100 * time_ms / total_ms:.1f} % of the summed layer {profile.time_names[0]}s "
            f"({profile.runs_completed} runs on {profile.target.get('name', 'the target')}, {profile.mode} mode)")


def hint_kind(profile: "Profile", rule: str, node_ids) -> str:
    """The weakest kind of the figures a hint uses (DESIGN.md's rule for a combination): its layers'
    times (time_ms), the profile's total (share's denominator), and estimated for a rule that
    judges by static figures.  The total sums whole kernels (attribution preserves a kernel's time),
    so it has the kind of the kernels, not of the attributed parts."""
    kinds = [g.time.kind for g in profile.groups if g.node_ids] or [n.kind for n in profile.nodes.values()]
    kinds += [profile.nodes[i].kind for i in node_ids if i in profile.nodes]
    if rule in RULES_ON_STATIC_FIGURES:
        kinds.append(ESTIMATED)
    return combine_kinds(kinds)


def find_hints(profile: "Profile", analysis: "ModelAnalysis") -> list[dict]:
    total = profile.total_node_ms
    if total <= 0:
        return []
    graph = analysis.graph
    producers = {out: node for node in graph.nodes for out in node.outputs if out}
    consumers = graph.consumers()

    def ms(node_id: str) -> float:
        timing = profile.nodes.get(node_id)
        return timing.time.median_ms if timing is not None else 0.0

    timed = [node_id for node_id in analysis.order if node_id in profile.nodes]
    hints: list[dict] = []
    names = layer_names(analysis)

    # 1. BatchNorm that can be folded into the preceding Conv/Gemm
    foldable = []
    for node_id in timed:
        node = graph.node(node_id)
        if costs.canonical_op(node) != "BatchNormalization" or not node.inputs:
            continue
        producer = producers.get(node.inputs[0])
        if producer is not None and costs.canonical_op(producer) in _FOLDABLE_PRODUCERS \
                and len(consumers.get(node.inputs[0], ())) == 1:
            foldable.append((node_id, producer.id))
    bn_ms = sum(ms(bn) for bn, _ in foldable)
    fused_in_deployment = profile.mode == "deployed" and all(
        profile.nodes[bn].group_id == profile.nodes[conv].group_id
        for bn, conv in foldable if conv in profile.nodes)
    if foldable and bn_ms / total >= BATCHNORM_MIN_SHARE and not fused_in_deployment:
        example_bn, example_conv = foldable[0]
        hints.append(_hint(
            "fold_batchnorm", bn_ms / total,
            f"{_layers(len(foldable), 'BatchNormalization layer')} {'follow' if len(foldable) > 1 else 'follows'} a "
            f"Conv/Gemm and can be folded into its "
            f"weights (e.g. {names[example_bn]} into {names[example_conv]}); they take {bn_ms:.3f} ms "
            f"({100 * bn_ms / total:.1f} % of the time). Fold them before export or deployment.",
            [bn for bn, _ in foldable], bn_ms,
            _evidence(profile, f"{_layers(len(foldable), 'foldable BatchNormalization layer')} (graph structure)",
                      bn_ms, total)))

    # 2. ConvTranspose dominating the decoder
    decoder_ids = [i for i in timed if analysis.nodes[i].stage == "decoder"]
    decoder_ms = sum(ms(i) for i in decoder_ids)
    transposed = [i for i in decoder_ids if costs.canonical_op(graph.node(i)) == "ConvTranspose"]
    transposed_ms = sum(ms(i) for i in transposed)
    if transposed and decoder_ms > 0 and transposed_ms / decoder_ms >= CONVTRANSPOSE_DECODER_SHARE:
        hints.append(_hint(
            "convtranspose_decoder", transposed_ms / total,
            f"ConvTranspose takes {100 * transposed_ms / decoder_ms:.0f} % of the decoder's time "
            f"({transposed_ms:.3f} ms in {_layers(len(transposed))}; slowest: "
            f"{names[max(transposed, key=ms)]}). Try Resize (nearest or bilinear) followed by a Conv, "
            "and profile both.", transposed, transposed_ms,
            _evidence(profile, f"ConvTranspose in the decoder ({_layers(len(transposed))}, "
                      f"{100 * transposed_ms / decoder_ms:.0f} % of the decoder's {decoder_ms:.3f} ms)",
                      transposed_ms, total),
            guidance="Resize + Conv is often much faster than ConvTranspose on mobile GPUs and CPUs, "
                     "and avoids checkerboard artefacts."))

    # 3. depthwise convolutions dominating on a CPU
    depthwise = [i for i in timed if _is_depthwise(graph.node(i), graph)]
    depthwise_ms = sum(ms(i) for i in depthwise)
    on_cpu = all(profile.nodes[i].compute_unit.upper().startswith("CPU") for i in depthwise)
    if depthwise and on_cpu and depthwise_ms / total >= DEPTHWISE_SHARE:
        hints.append(_hint(
            "depthwise_cpu", depthwise_ms / total,
            f"Depthwise convolutions take {100 * depthwise_ms / total:.0f} % of the time on the CPU "
            f"({_layers(len(depthwise))}; slowest: {names[max(depthwise, key=ms)]}) while doing few MACs. "
            "On this CPU consider fewer, wider layers.",
            depthwise, depthwise_ms,
            _evidence(profile, f"depthwise convolutions on the CPU ({_layers(len(depthwise))})",
                      depthwise_ms, total),
            guidance="depthwise convolutions are memory-bound on CPUs and usually cheap on a phone's "
                     "GPU or Neural Engine; profile on that target to know."))

    # 4. layers far slower than their MACs predict
    rates = {i: ms(i) / analysis.nodes[i].macs for i in timed if (analysis.nodes[i].macs or 0) > 0 and ms(i) > 0}
    if len(rates) >= 3:
        median_rate = statistics.median(rates.values())
        slow = [i for i, rate in rates.items()
                if rate >= LOW_EFFICIENCY_FACTOR * median_rate and ms(i) / total >= LOW_EFFICIENCY_MIN_SHARE]
        slow.sort(key=ms, reverse=True)
        if slow:
            slow_ms = sum(ms(i) for i in slow)
            worst = slow[0]
            hints.append(_hint(
                "low_efficiency", slow_ms / total,
                f"{_layers(len(slow))} {'run' if len(slow) > 1 else 'runs'} at {LOW_EFFICIENCY_FACTOR:.0f}x or more "
                f"of the model's median time per MAC (worst: {names[worst]}, {rates[worst] / median_rate:.1f}x). "
                "Their shapes or ops fit this target badly: check their kernel sizes, groups, strides and "
                "channel counts.", slow, slow_ms,
                _evidence(profile, f"{_layers(len(slow))} at >= {LOW_EFFICIENCY_FACTOR:.0f}x the median ms per "
                          "MAC (MACs estimated from shapes)", slow_ms, total)))

    # 5. memory-bound layers
    bound = [i for i in timed if ms(i) / total >= MEMORY_BOUND_MIN_SHARE
             and _intensity(analysis, i) is not None and _intensity(analysis, i) < MEMORY_BOUND_INTENSITY]
    if bound:
        bound.sort(key=ms, reverse=True)
        bound_ms = sum(ms(i) for i in bound)
        hints.append(_hint(
            "memory_bound", bound_ms / total,
            f"{_layers(len(bound))} taking {100 * bound_ms / total:.0f} % of the time "
            f"{'do' if len(bound) > 1 else 'does'} under "
            f"{MEMORY_BOUND_INTENSITY:g} FLOP per byte moved (e.g. {names[bound[0]]}). "
            "Fuse them into neighbours, keep tensors smaller (lower resolution, fewer channels) or "
            "avoid layout changes.", bound, bound_ms,
            _evidence(profile, f"{_layers(len(bound))} under {MEMORY_BOUND_INTENSITY:g} FLOP/byte (FLOPs and "
                      "bytes estimated from shapes)", bound_ms, total),
            guidance="layers this low in arithmetic per byte are usually limited by memory traffic, not "
                     "arithmetic, on any processor."))

    # 6. dequantize chains (TFLite): weights stored as float16/int8 turned into float32 at every run
    dequantize = [i for i in timed if graph.node(i).op_type in ("DEQUANTIZE", "QUANTIZE")]
    dequantize_ms = sum(ms(i) for i in dequantize)
    if dequantize and dequantize_ms / total >= DEQUANTIZE_SHARE:
        hints.append(_hint(
            "dequantize_chain", dequantize_ms / total,
            f"{_layers(len(dequantize), 'QUANTIZE/DEQUANTIZE operator')} take {100 * dequantize_ms / total:.0f} % of "
            f"the time (slowest: {names[max(dequantize, key=ms)]}): tensors are converted between stored and "
            "computed types at run time. Run with a delegate that reads the stored type (XNNPACK folds "
            "float16 weights at load: --mode deployed), or export with float32 weights.",
            dequantize, dequantize_ms,
            _evidence(profile, f"QUANTIZE/DEQUANTIZE ({_layers(len(dequantize), 'operator')})", dequantize_ms, total)))

    for hint in hints:
        hint["kind"] = hint_kind(profile, hint["rule"], hint["node_ids"])
    return by_severity(hints)


SEVERITY_ORDER = ("high", "medium", "low")


def by_severity(hints) -> list[dict]:
    """Most severe first, then the larger time share: the first hint is the one to act on."""
    def key(hint):
        severity = str(hint.get("severity", "low"))
        rank = SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)
        return rank, -float(hint.get("share") or 0.0)
    return sorted(hints, key=key)


def _intensity(analysis: "ModelAnalysis", node_id: str) -> Optional[float]:
    return analysis.nodes[node_id].arithmetic_intensity


def _is_depthwise(node, graph) -> bool:
    if node.op_type == "DEPTHWISE_CONV_2D":  # TFLite names it
        return True
    if costs.canonical_op(node) != "Conv":
        return False
    group = int(node.attributes.get("group", 1) or 1)  # type: ignore[arg-type]
    if group <= 1 or len(node.inputs) < 2:
        return False
    weight = graph.value_type(node.inputs[1])
    return weight is not None and weight.shape is not None and len(weight.shape) >= 2 and weight.shape[1] == 1
