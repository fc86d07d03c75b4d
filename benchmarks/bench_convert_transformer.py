"""Converting the generated decoder (legacy-export flavour) to Core ML, by size and stage (issue 17).

    python3 benchmarks/bench_convert_transformer.py [--sizes 5000,50000] [--repeats 3] [--large-repeats 1]
                                                    [--profile-runs 3]

The model is engine.transformer_samples' "optimum" decoder written the way the legacy
`torch.onnx.export` writes it at opset 17 (`legacy_export=True`: named input sizes, every size
read through Shape -> Gather -> Unsqueeze -> Concat), small dimensions (hidden 64, 4 heads,
2 K/V heads, vocabulary 50), random weights stored in the file, about 5,000 and 50,000 nodes.
Each is converted at fp32 with the input shapes given (the shape-fixing pass folds the shape
chains) and every check on, the value check included; the conversion must verify.

Per size, medians over the repeats (measured, wall clock, this process):
- shape fixing: reading the model at the given shapes with the shape-fixing passes, and the
  pre-check that evaluates the folded constants (convert's "read" + "check_and_fold");
- translation: MIL build, coremltools, saving the package ("build" + "coremltools" + "save");
- verification: re-import, layer map, weights, values on the MIL reference evaluator against
  ONNX Runtime ("verify");
- the reference: creating an ONNX Runtime session (CPU, default options) for the same file, in
  the same process, so that the ratio "conversion / session creation" stays comparable on a
  loaded machine.

Then the source model is profiled on the CPU reference (ONNX Runtime) and its layers grouped by
block (engine.grouping.repeated_blocks / compare_blocks): the slowest block against the median.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIMENSIONS = dict(hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, sequence=3, past=5)
STAGES = {"shape fixing": ("read", "check_and_fold"), "translation": ("build", "coremltools", "save"),
          "verification": ("verify",)}


def session_seconds(path: Path) -> float:
    import onnxruntime

    started = time.perf_counter()
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return time.perf_counter() - started


def main() -> int:
    import onnx

    from engine.analysis import analyze
    from engine.convert import convert
    from engine.grouping import block_summary, compare_blocks, namespace_groups, repeated_blocks
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget
    from engine.transformer_samples import (TransformerConfig, fixed_input_shapes, layers_for_nodes,
                                            transformer_model, with_random_weights)
    from importers import open_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000", help="node counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="conversions per size below 20,000 nodes")
    parser.add_argument("--large-repeats", type=int, default=1, help="conversions per size of 20,000+ nodes")
    parser.add_argument("--profile-runs", type=int, default=3)
    args = parser.parse_args()

    rows, blocks = [], []
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-convert-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in (int(s) for s in args.sizes.split(",")):
            layers = layers_for_nodes(size, legacy_export=True, **{k: v for k, v in DIMENSIONS.items()
                                                                     if k not in ("sequence", "past")})
            config = TransformerConfig(layers=layers, legacy_export=True, **DIMENSIONS)
            model = with_random_weights(transformer_model(config)[0], seed=size)
            path = Path(folder) / f"decoder_{size}.onnx"
            onnx.save(model, str(path))
            nodes = len(model.graph.node)
            del model
            shapes = fixed_input_shapes(config)
            repeats = args.repeats if size < 20_000 else args.large_repeats
            stage_times = {stage: [] for stage in STAGES}
            totals, sessions = [], []
            result = None
            for repeat in range(repeats):
                print(f"\r{nodes} nodes: conversion {repeat + 1}/{repeats}", end="", file=sys.stderr)
                sessions.append(session_seconds(path))
                result = convert(path, Path(folder) / f"decoder_{size}.mlpackage", precision="fp32",
                                 input_shapes=shapes)
                if result.failed_checks or result.verification["values"]["status"] != "passed":
                    print(f"\n{nodes} nodes: conversion did not verify: {result.outcomes()}", file=sys.stderr)
                    return 1
                for stage, keys in STAGES.items():
                    stage_times[stage].append(sum(result.timings[key] for key in keys))
                totals.append(result.timings["total"])
            print(file=sys.stderr)
            folded = len(result.layer_map["folded"])
            rows.append((nodes, layers, folded, repeats, statistics.median(totals),
                         {stage: statistics.median(times) for stage, times in stage_times.items()},
                         statistics.median(sessions)))

            print(f"{nodes} nodes: profiling on the CPU reference ({args.profile_runs} runs)", file=sys.stderr)
            with CpuTarget() as target:
                profile = target.profile(ProfileSettings(runs=args.profile_runs, warmup=1, input_shapes=shapes),
                                         model_path=path)
            analysis = analyze(open_model(path, input_shapes=shapes))
            groups = namespace_groups(analysis)
            family = repeated_blocks(groups, analysis)[0]
            blocks.append((nodes, family, block_summary(family, compare_blocks(family, groups, analysis, profile))))

    print("Generated decoder, legacy-export flavour (opset 17, shape chains), converted at fp32 and verified by "
          "value; medians, wall clock (measured), this process")
    print()
    header = (f"{'nodes':>7s} {'blocks':>6s} {'folded':>6s} {'runs':>4s} {'total s':>8s} "
              + " ".join(f"{stage + ' s':>15s}" for stage in STAGES) + f" {'ORT session s':>13s} {'total/ORT':>9s}")
    print(header)
    for nodes, layers, folded, repeats, total, stages, session in rows:
        print(f"{nodes:7d} {layers:6d} {folded:6d} {repeats:4d} {total:8.2f} "
              + " ".join(f"{stages[stage]:15.2f}" for stage in STAGES)
              + f" {session:13.3f} {total / session:9.2f}")
    print()
    print("CPU reference profile (ONNX Runtime), layers grouped by block:")
    for nodes, family, summary in blocks:
        print(f"  {nodes} nodes: {len(family.group_ids)} blocks in {family.name}; {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
