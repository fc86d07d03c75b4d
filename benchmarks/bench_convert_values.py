"""What the value checks add to `convert`: the sample and a few light-zoo models.

    python3 benchmarks/bench_convert_values.py [--repeat 3] [--models sample,squeezenet,...]

For each model and precision, `convert()` runs alternately without value checks (the reference,
`value_checks=False`) and with them, in the same process; the table gives medians, the time
the checks add and the ratio with / without.  The added time splits into reading the program
back from the package, the MIL reference evaluator, ONNX Runtime with every intermediate as an
output, and the weight comparison (the `verify` timing minus the reference run's).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = "sample,squeezenet,shufflenet,inception_v1,resnet50"


def model_path(name: str) -> Path:
    if name == "sample":
        from engine.samples import default_sample_path
        return Path(default_sample_path())
    import onnx
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--precisions", default="fp16,fp32")
    args = parser.parse_args()
    from engine.convert import convert

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            for precision in args.precisions.split(","):
                without, with_checks, outcome = [], [], ""
                for _ in range(args.repeat):
                    for checks, times in ((False, without), (True, with_checks)):
                        start = time.perf_counter()
                        result = convert(model_path(name), Path(folder) / f"{name}.mlpackage", precision=precision,
                                         value_checks=checks)
                        times.append(time.perf_counter() - start)
                        if checks:
                            values = result.verification["values"]
                            outcome = f"{values['status']}, {values.get('compared_tensors', 0)} tensors"
                reference, checked = statistics.median(without), statistics.median(with_checks)
                rows.append((name, precision, reference, checked, checked - reference, checked / reference, outcome))
                print(f"  {name} {precision}: {checked - reference:.1f} s added", file=sys.stderr, flush=True)
    print(f"| model | precision | convert, no value checks (s) | with value checks (s) | added (s) | ratio | "
          f"values check |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, precision, reference, checked, added, ratio, outcome in rows:
        print(f"| {name} | {precision} | {reference:.2f} | {checked:.2f} | {added:.2f} | {ratio:.2f} | {outcome} |")
    print(f"\nmedians of {args.repeat} runs each, alternating, same process; machine: {os.cpu_count()} cores (shared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
