"""Per-layer numerics (`layerscope numerics`): time of both modes and peak memory.

    python benchmarks/bench_numerics.py [--repeat 3] [--models sample,resnet50] [--modes fp16-storage,fp16-compute]

For the MobileUNet sample and the light ResNet-50 (onnx package zoo, weights
from ConstantOfShape), at their own input sizes (160x160, 224x224), one
generated input:

- plain run     median wall time of one plain ONNX Runtime run of the same model
                (default session options, weights already folded by the session
                copy): the reference every other time is divided by
- storage/compute  wall time of run_numerics in each mode, everything included
                (session copy, constant folding, segment sessions, both runs,
                every comparison), and its ratio to the plain run
- peak RSS      the maximum resident memory of a fresh process that does only
                that (plain: load + one run; numerics: the whole comparison),
                from getrusage; "imports" is the same process after its imports,
                so peak - imports is what the work itself held

Each figure is measured in a subprocess of its own so that peaks do not mix.
Machines here are shared and noisy: read medians and ratios, not single runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np, onnxruntime as ort
from engine.numerics import NumericsSettings, run_numerics
from engine.targets import ProfileSettings
from engine.targets.cpu import CpuTarget
imports_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, what = {path!r}, {what!r}
if what == "plain":
    target = CpuTarget()
    target.prepare(path, ProfileSettings(runs=1, warmup=0))
    session = ort.InferenceSession(str(target.session_model_path), providers=["CPUExecutionProvider"])
    feed = target.inputs
    session.run(None, feed)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    extra = {{}}
else:
    start = time.perf_counter()
    result = run_numerics(path, NumericsSettings(mode=what))
    seconds = time.perf_counter() - start
    extra = {{"segments": result.settings["segments"], "layers": len(result.layers),
             "first_departing": result.first_departing, "reference_s": result.seconds["reference"],
             "reduced_s": result.seconds["reduced"], "complete": result.complete}}
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "peak_mb": peak_kb / 1024, "imports_mb": imports_kb / 1024, **extra}}))
"""


def measure(path: Path, what: str) -> dict:
    code = _CHILD.format(root=str(ROOT), path=str(path), what=what)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{what} on {path.name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--models", default="sample,resnet50")
    parser.add_argument("--modes", default="fp16-storage,fp16-compute")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnx
    from engine.samples import default_sample_path
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    models = {"sample": ("MobileUNet a0.5 160", default_sample_path()),
              "resnet50": ("ResNet-50 (light zoo) 224", light / "light_resnet50.onnx")}
    modes = args.modes.split(",")
    print(f"{'model':<26} {'what':<13} {'median s':>9} {'x plain':>8} {'peak MB':>8} {'imports MB':>10} "
          f"{'segments':>8}  runs")
    for key in args.models.split(","):
        label, path = models[key]
        rows = {what: [measure(path, what) for _ in range(args.repeat)] for what in ["plain", *modes]}
        plain = statistics.median(r["seconds"] for r in rows["plain"])
        for what, runs in rows.items():
            each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            imports = statistics.median(r["imports_mb"] for r in runs)
            segments = runs[0].get("segments", "-")
            print(f"{label:<26} {what:<13} {seconds:9.3f} {seconds / plain:8.1f} {peak:8.0f} {imports:10.0f} "
                  f"{segments!s:>8}  {each}")
            if what != "plain":
                print(f"{'':<26} {'':<13} reference {statistics.median(r['reference_s'] for r in runs):.2f} s, "
                      f"reduced {statistics.median(r['reduced_s'] for r in runs):.2f} s, "
                      f"{runs[0]['layers']} layers, first departing: {runs[0]['first_departing']}")


if __name__ == "__main__":
    main()
