"""Conversion coverage on the ONNX project's node-test models (issue 17, item 3).

    python3 benchmarks/bench_convert_coverage.py [--target iOS18] [--convert] [--limit N] [--show-reasons]

The corpus is `onnx.backend.test.case.node.collect_testcases()` restricted to the models whose
inputs are all float32 (855 with onnx 1.23), each at the fixed input shapes of its first data
set.  For each model `check_convertible` (the pre-check `convert` runs before building anything)
gives the blockers; the table counts the models that pass and, per op type, the models it
blocks and the node count, with the most common reason.  With `--convert`, every model that
passes the pre-check is also converted at fp32 with the value checks (MIL reference evaluator
against ONNX Runtime); the outcome counts are printed after the table.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import warnings
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


def main() -> int:
    import onnx

    from engine.convert import ConversionError, check_convertible, convert

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="iOS18")
    parser.add_argument("--convert", action="store_true", help="also convert and verify the models that pass")
    parser.add_argument("--limit", type=int, default=0, help="only the first N models (0: all)")
    parser.add_argument("--show-reasons", action="store_true", help="every distinct reason per op")
    args = parser.parse_args()

    cases = float32_cases()
    if args.limit:
        cases = cases[:args.limit]
    passed = []
    models_blocked = collections.Counter()
    nodes_blocked = collections.Counter()
    reasons: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="layerscope-coverage-") as folder:
        for index, case in enumerate(cases):
            path = Path(folder) / f"{case.name}.onnx"
            onnx.save(case.model, str(path))
            try:
                blockers = check_convertible(path, input_shapes(case) or None, target=args.target)
            except Exception as exc:  # a model the reader itself refuses: counted, with its reason
                blockers = [type("B", (), {"op_type": "(model)", "reason": f"{type(exc).__name__}: {exc}"})()]
            if not blockers:
                passed.append((case, path))
            for op_type in {b.op_type for b in blockers}:
                models_blocked[op_type] += 1
            for blocker in blockers:
                nodes_blocked[blocker.op_type] += 1
                reasons[blocker.op_type][_short(blocker.reason)] += 1
            print(f"\r{index + 1}/{len(cases)} checked", end="", file=sys.stderr)
        print(file=sys.stderr)
        elapsed = time.perf_counter() - started

        share = 100.0 * len(passed) / max(len(cases), 1)
        print(f"node-test corpus, float32 models: {len(passed)} of {len(cases)} pass the pre-check "
              f"({share:.1f} %), target {args.target}, {elapsed:.1f} s")
        print()
        print(f"{'op type':32s} {'models':>6s} {'nodes':>6s}  most common reason")
        for op_type, count in models_blocked.most_common():
            reason, _ = reasons[op_type].most_common(1)[0]
            print(f"{op_type:32s} {count:6d} {nodes_blocked[op_type]:6d}  {reason}")
            if args.show_reasons:
                for other, times in reasons[op_type].most_common()[1:]:
                    print(f"{'':32s} {'':6s} {times:6d}  {other}")

        if args.convert:
            outcomes = collections.Counter()
            failures = []
            for case, path in passed:
                try:
                    result = convert(path, Path(folder) / f"{case.name}.mlpackage", precision="fp32",
                                     target=args.target, input_shapes=input_shapes(case) or None)
                    values = result.verification["values"]["status"]
                    outcome = "failed" if result.failed_checks else f"converted, values {values}"
                    if result.failed_checks:
                        failures.append(f"{case.name}: {', '.join(result.failed_checks)}")
                except ConversionError as exc:
                    outcome = "refused by the build"
                    failures.append(f"{case.name}: {_short(str(exc))}")
                outcomes[outcome] += 1
            print()
            print(f"converted at fp32 with value checks ({len(passed)} models):")
            for outcome, count in outcomes.most_common():
                print(f"  {count:4d}  {outcome}")
            for line in failures:
                print(f"  {line}")
    return 0


def _short(reason: str, width: int = 110) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= width else reason[:width - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
