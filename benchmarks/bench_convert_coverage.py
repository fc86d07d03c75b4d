"""Conversion coverage on the ONNX project's node-test models (issue 17, item 3).

    python3 benchmarks/bench_convert_coverage.py [--target iOS18] [--limit N] [--only SUBSTRING]
                                                 [--show-reasons] [--list]

The corpus is `onnx.backend.test.case.node.collect_testcases()` restricted to the models whose
inputs are all float32 (855 with onnx 1.23), each at the fixed input shapes of its first data
set.  Every model goes through three stages, and a model *passes* only when all three do:

1. the pre-check (`check_convertible`, what `convert` runs before building anything);
2. the conversion at fp32 (`convert`: MIL build, coremltools, save, re-open);
3. the checks after it, the value check included: the saved program run on the MIL reference
   evaluator against ONNX Runtime on seeded random inputs, outputs and every mapped intermediate.
   "values not run" (an op the evaluator cannot execute) is not a pass.

The table counts, per op type, the models it stops (pre-check blockers, the node a build failure
names, the first departing layer of a failed value check; other failed checks are listed as
"(check: name)").  `--list` prints every model's outcome.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def float32_cases():
    import numpy as np
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return [case for case in cases if case.model is not None
            and all(i.type.tensor_type.elem_type == 1 for i in case.model.graph.input)]


def input_shapes(case) -> dict[str, list[int]]:
    """The shapes of the first data set's inputs (the model's own where it has none)."""
    if case.data_sets:
        inputs = case.data_sets[0][0]
        return {graph_input.name: list(getattr(value, "shape", ()))
                for graph_input, value in zip(case.model.graph.input, inputs)}
    return {}


@dataclass
class Outcome:
    """What happened to one model: the stage it stopped at ("passed" when none) and the blockers."""

    name: str
    stage: str  # "passed" | "pre-check" | "build" | "checks"
    blockers: list[tuple[str, str]] = field(default_factory=list)  # (op type, reason)


def run_case(case, folder: Path, target: str) -> Outcome:
    """Pre-check, convert at fp32 and verify one node-test model."""
    import onnx

    from engine.convert import ConversionError, check_convertible, convert

    path = folder / f"{case.name}.onnx"
    onnx.save(case.model, str(path))
    shapes = input_shapes(case) or None
    try:
        blockers = check_convertible(path, shapes, target=target)
    except Exception as exc:  # a model the reader itself refuses: counted, with its reason
        return Outcome(case.name, "pre-check", [("(model)", f"{type(exc).__name__}: {exc}")])
    if blockers:
        return Outcome(case.name, "pre-check", [(b.op_type, b.reason) for b in blockers])
    try:
        result = convert(path, folder / f"{case.name}.mlpackage", precision="fp32", target=target,
                         input_shapes=shapes)
    except ConversionError as exc:
        return Outcome(case.name, "build", [(b.op_type, b.reason) for b in exc.blockers])
    except Exception as exc:  # a converter crash is a finding too: named, not fatal to the run
        return Outcome(case.name, "build", [("(crash)", f"{type(exc).__name__}: {exc}")])
    checks = result.verification
    problems = []
    for name, check in checks.items():
        if check["status"] != "failed":
            continue
        if name == "values" and check.get("first_departure"):
            departure = check["first_departure"]
            problems.append((departure.get("op_type") or "(output)", check["detail"]))
        else:
            problems.append((f"(check: {name})", check["detail"]))
    values = checks.get("values", {}).get("status")
    if not problems and values != "passed":
        problems.append(("(check: values)", f"values {values}: {checks.get('values', {}).get('detail', '')}"))
    return Outcome(case.name, "checks" if problems else "passed", problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="iOS18")
    parser.add_argument("--limit", type=int, default=0, help="only the first N models (0: all)")
    parser.add_argument("--only", default="", help="only the models whose name contains this")
    parser.add_argument("--show-reasons", action="store_true", help="every distinct reason per op")
    parser.add_argument("--list", action="store_true", help="every model's outcome")
    args = parser.parse_args()

    cases = [case for case in float32_cases() if args.only in case.name]
    if args.limit:
        cases = cases[:args.limit]
    outcomes = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layerscope-coverage-") as folder, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index, case in enumerate(cases):
            outcomes.append(run_case(case, Path(folder), args.target))
            print(f"\r{index + 1}/{len(cases)} converted", end="", file=sys.stderr)
    print(file=sys.stderr)
    elapsed = time.perf_counter() - started
    print_table(outcomes, args.target, elapsed, args.show_reasons, args.list)
    return 0


def print_table(outcomes: list[Outcome], target: str, elapsed: float, show_reasons: bool, listing: bool) -> None:
    total = len(outcomes)
    stages = collections.Counter(outcome.stage for outcome in outcomes)
    passed = stages["passed"]
    print(f"node-test corpus, float32 models at fixed shapes: {passed} of {total} convert and verify by value "
          f"({100.0 * passed / max(total, 1):.1f} %), target {target}, fp32, {elapsed:.0f} s (measured)")
    print(f"  stopped by the pre-check: {stages['pre-check']}, by the build: {stages['build']}, "
          f"by a failed or unrun check: {stages['checks']}")
    models_blocked = collections.Counter()
    nodes_blocked = collections.Counter()
    reasons: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        for op_type in {op_type for op_type, _ in outcome.blockers}:
            models_blocked[op_type] += 1
        for op_type, reason in outcome.blockers:
            nodes_blocked[op_type] += 1
            reasons[op_type][_short(reason)] += 1
    print()
    print(f"{'op type':32s} {'models':>6s} {'nodes':>6s}  most common reason")
    for op_type, count in models_blocked.most_common():
        reason, _ = reasons[op_type].most_common(1)[0]
        print(f"{op_type:32s} {count:6d} {nodes_blocked[op_type]:6d}  {reason}")
        if show_reasons:
            for other, times in reasons[op_type].most_common()[1:]:
                print(f"{'':32s} {'':6s} {times:6d}  {other}")
    if listing:
        print()
        for outcome in outcomes:
            first = f"{outcome.blockers[0][0]}: {_short(outcome.blockers[0][1], 150)}" if outcome.blockers else ""
            print(f"{outcome.stage:9s} {outcome.name:60s} {first}")


def _short(reason: str, width: int = 110) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= width else reason[:width - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
