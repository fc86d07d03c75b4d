"""Compact Markdown summaries for code review: a CI job posts one as a pull-request comment.

    profile_markdown(profiles, names)          # end-to-end, stages, top layers, hints; several targets
    compare_markdown(a, b, comparison, names)  # what got slower or faster beyond the noise

Noise: a ratio b/a comes with its spread, from b's p10..p90 over a's p90..p10
(the ratio if both sides sat at opposite ends of their run-to-run range).  A
layer or stage counts as changed only when its ratio is beyond the compare
threshold and the whole spread lies on the same side of 1, so a noisy layer
whose ranges overlap is not reported as a regression.  Stage spreads come
from per-run stage sums (run r's samples of the stage's layers added up),
which exist when both profiles kept per-run samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from engine.hints import finding
from engine.profile import TimingStats

if TYPE_CHECKING:
    from engine.compare import Comparison
    from engine.profile import Profile


def _cell(text: str) -> str:
    """Table-cell text: a '|' in a layer name must not split the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} ms" if value < 100 else f"{value:.1f} ms"


def profile_markdown(profiles, names: Mapping[str, str], top: int = 10, title: str = "") -> str:
    """Summary of one profile, or of several targets of the same model side by side (first is primary)."""
    from engine.report.html_report import as_profile_list, bottleneck_stage, target_labels

    profiles = as_profile_list(profiles)
    profile = profiles[0]
    labels = target_labels(profiles)
    total = profile.total_node_ms
    lines = [f"### {title or 'LayerScope profile'}: `{profile.model_path.rsplit('/', 1)[-1]}`", ""]
    statistic, low, high = profile.time_names  # a row of another statistic says its own
    lines.append(f"| target | end-to-end {statistic} (measured) | {low}–{high} | vs first | bottleneck stage "
                 "| runs |")
    lines.append("|---|---:|---:|---:|---|---:|")
    reference = profile.end_to_end.median_ms if profile.end_to_end else None
    for label, each in zip(labels, profiles):
        e2e = each.end_to_end
        ratio = f"{e2e.median_ms / reference:.2f}x" if e2e and reference else "–"
        bottleneck = bottleneck_stage(each)
        own = "" if e2e is None or e2e.names[0] == statistic else " ({} of runs; {}–{})".format(*e2e.names)
        lines.append(f"| {_cell(label)} | {_ms(e2e.median_ms if e2e else None)}{own} | "
                     f"{'–' if e2e is None else f'{e2e.p10_ms:.3f}–{e2e.p90_ms:.3f}'} | {ratio} | "
                     f"{_cell(f'{bottleneck[0]} ({100 * bottleneck[1]:.0f} %)') if bottleneck else '–'} | "
                     f"{each.runs_completed}{'' if each.complete else ' (incomplete: ' + _cell(each.error) + ')'} |")
    if profile.stage_times_ms:
        lines += ["", "| stage | " + " | ".join(_cell(label) for label in labels) + " |",
                  "|---|" + "---:|" * len(labels)]
        stages: list[str] = []
        for each in profiles:
            stages.extend(s for s in each.stage_times_ms if s not in stages)
        for stage in stages:
            cells = []
            for each in profiles:
                ms = each.stage_times_ms.get(stage)
                cells.append("–" if ms is None else
                             f"{ms:.3f} ms ({100 * each.stage_shares().get(stage, 0):.0f} %, {each.stage_kind(stage)})")
            lines.append(f"| {_cell(stage)} | " + " | ".join(cells) + " |")
    ranked = profile.top_nodes(top)
    if ranked:
        lines += ["", f"Top {len(ranked)} layers on {_cell(labels[0])}:", "",
                  f"| # | layer | op | stage | {statistic} | share | kind |", "|---:|---|---|---|---:|---:|---|"]
        for index, node in enumerate(ranked, 1):
            share = node.time.median_ms / total if total else 0.0
            lines.append(f"| {index} | {_cell(names.get(node.node_id, node.node_id))} | {_cell(node.op_type)} | "
                         f"{_cell(node.stage)} | {_ms(node.time.median_ms)} | {100 * share:.1f} % | {node.kind} |")
    for label, each in zip(labels, profiles):
        if not each.hints:
            continue
        lines += ["", f"Hints{' on ' + _cell(label) if len(profiles) > 1 else ''}:", ""]
        for hint in each.hints:
            guidance = str(hint.get("guidance") or "")
            message = finding(hint)
            lines.append(f"- **{hint.get('rule')}** ({hint.get('severity', '?')}, {hint.get('kind', 'measured')}): "
                         f"{_cell(message)}")
            if hint.get("evidence"):
                lines.append(f"  - evidence: {_cell(hint['evidence'])}")
            if guidance:
                lines.append(f"  - _general guidance, not measured by this profile:_ {_cell(guidance)}")
    for each in profiles:
        for warning in each.warnings:
            lines.append(f"\n> warning: {_cell(warning)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RatioWithSpread:
    name: str
    op_type: str
    a_ms: float
    b_ms: float
    ratio: Optional[float]
    low: Optional[float]  # b.p10 / a.p90
    high: Optional[float]  # b.p90 / a.p10

    def beyond_noise(self, threshold: float) -> str:
        """'slower', 'faster' or '' (within the threshold, or the spread straddles 1)."""
        if self.ratio is None or self.low is None or self.high is None:
            return ""
        if self.ratio > 1 + threshold and self.low > 1:
            return "slower"
        if self.ratio < 1 - threshold and self.high < 1:
            return "faster"
        return ""

    def text(self) -> str:
        if self.ratio is None:
            return "–"
        spread = f" (spread {self.low:.2f}–{self.high:.2f})" if self.low is not None and self.high is not None else ""
        return f"{self.ratio:.2f}x{spread}"


def ratio_with_spread(name: str, op_type: str, a: TimingStats, b: TimingStats) -> RatioWithSpread:
    ratio = b.median_ms / a.median_ms if a.median_ms > 0 else None
    low = b.p10_ms / a.p90_ms if a.p90_ms > 0 else None
    high = b.p90_ms / a.p10_ms if a.p10_ms > 0 else None
    return RatioWithSpread(name, op_type, a.median_ms, b.median_ms, ratio, low, high)


def stage_run_stats(profile: "Profile") -> dict[str, TimingStats]:
    """Per stage, the statistics of its per-run sums; empty when the layers' sample counts differ."""
    counts = {len(t.time.samples_ms) for t in profile.nodes.values()}
    if len(counts) != 1 or 0 in counts:
        return {}
    runs = counts.pop()
    sums: dict[str, list[float]] = {}
    for timing in profile.nodes.values():
        per_run = sums.setdefault(timing.stage, [0.0] * runs)
        for r, sample in enumerate(timing.time.samples_ms):
            per_run[r] += sample
    return {stage: TimingStats.from_samples(values) for stage, values in sums.items()}


def compare_changes(a: "Profile", b: "Profile", names: Mapping[str, str]) -> tuple[list[RatioWithSpread],
                                                                                  list[RatioWithSpread]]:
    """(stages, layers) present in both profiles with ratio b/a and spread; layers in a's order."""
    a_stages, b_stages = stage_run_stats(a), stage_run_stats(b)
    stages = [ratio_with_spread(stage, "", a_stages[stage], b_stages[stage])
              for stage in a_stages if stage in b_stages]
    layers = [ratio_with_spread(names.get(node_id, node_id), timing.op_type, timing.time, b.nodes[node_id].time)
              for node_id, timing in a.nodes.items() if node_id in b.nodes]
    return stages, layers


def compare_markdown(a: "Profile", b: "Profile", comparison: "Comparison", names: Mapping[str, str],
                     top: int = 10) -> str:
    threshold = comparison.threshold
    stages, layers = compare_changes(a, b, names)
    lines = [f"### LayerScope compare: `{b.model_path.rsplit('/', 1)[-1]}`", "",
             f"a = {_cell(comparison.a_label)} ({a.runs_completed} runs), "
             f"b = {_cell(comparison.b_label)} ({b.runs_completed} runs); ratios are b / a, spread from "
             f"p10–p90 of each side; changed = beyond {threshold * 100:.0f} % with the whole spread on one side "
             "of 1.", ""]
    if a.end_to_end is not None and b.end_to_end is not None:
        e2e = ratio_with_spread("end-to-end", "", a.end_to_end, b.end_to_end)
        verdict = e2e.beyond_noise(threshold) or "within the noise"
        lines.append(f"**End-to-end: {_ms(e2e.a_ms)} → {_ms(e2e.b_ms)}, {e2e.text()}: {verdict}** (measured)")
    changed_stages = [s for s in stages if s.beyond_noise(threshold)]
    for stage in sorted(changed_stages, key=lambda s: -abs(s.b_ms - s.a_ms)):
        lines.append(f"- the **{_cell(stage.name)}** stage got {stage.ratio:.2f}x "
                     f"{'slower' if stage.beyond_noise(threshold) == 'slower' else 'faster'}: "
                     f"{_ms(stage.a_ms)} → {_ms(stage.b_ms)} (spread {stage.low:.2f}–{stage.high:.2f})")
    if stages:
        lines += ["", "| stage | a | b | b / a (spread) | |", "|---|---:|---:|---:|---|"]
        for stage in stages:
            lines.append(f"| {_cell(stage.name)} | {_ms(stage.a_ms)} | {_ms(stage.b_ms)} | {stage.text()} | "
                         f"{stage.beyond_noise(threshold)} |")
    for direction in ("slower", "faster"):
        found = [c for c in layers if c.beyond_noise(threshold) == direction]
        found.sort(key=lambda c: -abs(c.b_ms - c.a_ms))  # the biggest change in time first
        lines += ["", f"**{len(found)} layer(s) {direction} beyond the noise**" + (":" if found else ".")]
        if found:
            lines += ["", "| layer | op | a | b | b / a (spread) |", "|---|---|---:|---:|---:|"]
            for change in found[:top]:
                lines.append(f"| {_cell(change.name)} | {_cell(change.op_type)} | {_ms(change.a_ms)} | "
                             f"{_ms(change.b_ms)} | {change.text()} |")
            if len(found) > top:
                lines.append(f"\n… and {len(found) - top} more.")
    noisy = sum(1 for c in layers if c.ratio is not None and abs(c.ratio - 1) > threshold
                and not c.beyond_noise(threshold))
    if noisy:
        lines.append(f"\n{noisy} layer(s) moved by more than {threshold * 100:.0f} % but within their run-to-run "
                     "spread: not counted.")
    for warning in comparison.warnings:
        lines.append(f"\n> warning: {_cell(warning)}")
    return "\n".join(lines) + "\n"
