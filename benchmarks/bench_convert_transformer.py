"""Converting the generated decoder to Core ML, by flavour, size and stage (issue 17).

    python3 benchmarks/bench_convert_transformer.py [--sizes 5000,50000] [--repeats 3] [--large-repeats 1]
                                                    [--profile-runs 3]
                                                    [--flavours opset23,microsoft_4bit] [--flavour-nodes 5000]
                                                    [--flavour-repeats 1]

Two tables; an empty --sizes or --flavours leaves its table out.

1. Legacy-export flavour: engine.transformer_samples' "optimum" decoder written the way the
   legacy `torch.onnx.export` writes it at opset 17 (`legacy_export=True`: named input sizes,
   every size read through Shape -> Gather -> Unsqueeze -> Concat), random weights, about 5,000
   and 50,000 nodes.  Converted at fp32 with the input shapes given (the shape-fixing pass folds
   the shape chains).  Then the source model is profiled on the CPU reference (ONNX Runtime) and
   its layers grouped by block (engine.grouping.repeated_blocks / compare_blocks): the slowest
   block against the median.
2. Flavours (engine.transformer_samples.flavour_model): "opset23" (Attention, RMSNormalization,
   RotaryEmbedding of opset 23) and "microsoft" / "microsoft_4bit" (onnxruntime-genai's contrib
   ops: SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, RotaryEmbedding,
   GroupQueryAttention with seqlens_k from attention_mask, and 4-bit MatMulNBits projections),
   as many blocks as make about --flavour-nodes nodes, random weights in the file.  Converted at
   fp32 for iOS 18, the genai flavours with --assume-full-attention-mask.

Both at small dimensions (hidden 64, 4 heads, 2 K/V heads, vocabulary 50, 3 new tokens after 5),
every check on (the values check runs the program on the MIL reference evaluator against ONNX
Runtime); every conversion must verify, else the script exits 1.

Per row, medians over the repeats (measured, wall clock, this process):
- shape fixing: reading the model with the shape-fixing passes, and the pre-check that evaluates
  the folded constants (convert's "read" + "check_and_fold");
- translation: MIL build, coremltools, saving the package ("build" + "coremltools" + "save");
- verification: re-import, layer map, weights, values ("verify");
- the reference: creating an ONNX Runtime session (CPU, default options) for the same file, in
  the same process, so that the ratio "conversion / session creation" stays comparable on a
  loaded machine.
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
FLAVOURS = {"opset23": dict(flavour="opset23"), "microsoft": dict(flavour="microsoft"),
            "microsoft_4bit": dict(flavour="microsoft", quantized=True)}
STAGES = {"shape fixing": ("read", "check_and_fold"), "translation": ("build", "coremltools", "save"),
          "verification": ("verify",)}


def session_seconds(path: Path) -> float:
    import onnxruntime

    started = time.perf_counter()
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return time.perf_counter() - started


class NotVerified(Exception):
    pass


def timed_conversions(path: Path, label: str, repeats: int, **options):
    """Converts `repeats` times; (last result, median total s, {stage: median s}, median ORT session s)."""
    from engine.convert import convert

    totals, sessions, stages, result = [], [], {stage: [] for stage in STAGES}, None
    for repeat in range(repeats):
        print(f"\r{label}: conversion {repeat + 1}/{repeats}", end="", file=sys.stderr)
        sessions.append(session_seconds(path))
        result = convert(path, path.with_suffix(".mlpackage"), precision="fp32", **options)
        if result.failed_checks or result.verification["values"]["status"] != "passed":
            raise NotVerified(f"{label}: conversion did not verify: {result.outcomes()}")
        totals.append(result.timings["total"])
        for stage, keys in STAGES.items():
            stages[stage].append(sum(result.timings[key] for key in keys))
    print(file=sys.stderr)
    return (result, statistics.median(totals), {stage: statistics.median(t) for stage, t in stages.items()},
            statistics.median(sessions))


def legacy_rows(sizes: list[int], repeats: int, large_repeats: int, profile_runs: int, folder: Path):
    """Rows (nodes, blocks, folded, runs, total, stages, session) and block lines (nodes, family, summary)."""
    import onnx

    from engine.analysis import analyze
    from engine.grouping import block_summary, compare_blocks, namespace_groups, repeated_blocks
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget
    from engine.transformer_samples import (TransformerConfig, fixed_input_shapes, layers_for_nodes,
                                            transformer_model, with_random_weights)
    from importers import open_model

    rows, blocks = [], []
    for size in sizes:
        layers = layers_for_nodes(size, legacy_export=True, **{k: v for k, v in DIMENSIONS.items()
                                                                 if k not in ("sequence", "past")})
        config = TransformerConfig(layers=layers, legacy_export=True, **DIMENSIONS)
        model = with_random_weights(transformer_model(config)[0], seed=size)
        path = folder / f"decoder_{size}.onnx"
        onnx.save(model, str(path))
        nodes = len(model.graph.node)
        del model
        shapes = fixed_input_shapes(config)
        runs = repeats if size < 20_000 else large_repeats
        result, total, stages, session = timed_conversions(path, f"legacy {nodes} nodes", runs, input_shapes=shapes)
        rows.append((nodes, layers, len(result.layer_map["folded"]), runs, total, stages, session))

        print(f"{nodes} nodes: profiling on the CPU reference ({profile_runs} runs)", file=sys.stderr)
        with CpuTarget() as target:
            profile = target.profile(ProfileSettings(runs=profile_runs, warmup=1, input_shapes=shapes),
                                     model_path=path)
        analysis = analyze(open_model(path, input_shapes=shapes))
        groups = namespace_groups(analysis)
        family = repeated_blocks(groups, analysis)[0]
        blocks.append((nodes, family, block_summary(family, compare_blocks(family, groups, analysis, profile))))
    return rows, blocks


def flavour_rows(nodes: int, flavours: list[str], repeats: int, folder: Path) -> list[tuple]:
    """(flavour, nodes, blocks, runs, total, stages, session, worst relative output error)."""
    import onnx

    from engine.transformer_samples import TransformerConfig, flavour_layers_for_nodes, flavour_model

    rows = []
    for name in flavours:
        options = FLAVOURS[name]
        extra = {k: v for k, v in options.items() if k != "flavour"}
        layers = flavour_layers_for_nodes(nodes, options["flavour"], **extra)
        model = flavour_model(TransformerConfig(layers=layers, **DIMENSIONS), **options)
        path = folder / f"{name}_{nodes}.onnx"
        onnx.save(model, str(path))
        count = len(model.graph.node)
        del model
        result, total, stages, session = timed_conversions(
            path, f"{name} {count} nodes", repeats, target="iOS18",
            assume_full_attention_mask=options["flavour"] == "microsoft")
        worst = max(e["max_rel_error"] for e in result.verification["values"]["outputs"].values())
        rows.append((name, count, layers, repeats, total, stages, session, worst))
    return rows


def stage_columns(stages: dict) -> str:
    return " ".join(f"{stages[stage]:15.2f}" for stage in STAGES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,50000", help="legacy-export node counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="legacy conversions per size below 20,000 nodes")
    parser.add_argument("--large-repeats", type=int, default=1, help="legacy conversions per size of 20,000+ nodes")
    parser.add_argument("--profile-runs", type=int, default=3)
    parser.add_argument("--flavours", default="opset23,microsoft_4bit",
                        help=f"comma-separated, of: {', '.join(FLAVOURS)}")
    parser.add_argument("--flavour-nodes", type=int, default=5000, help="about how many nodes per flavour model")
    parser.add_argument("--flavour-repeats", type=int, default=1, help="conversions per flavour")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    flavours = [f for f in args.flavours.split(",") if f]
    unknown = [f for f in flavours if f not in FLAVOURS]
    if unknown:
        parser.error(f"unknown flavour(s) {', '.join(unknown)}; known: {', '.join(FLAVOURS)}")

    with tempfile.TemporaryDirectory(prefix="layerscope-bench-convert-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rows, blocks = legacy_rows(sizes, args.repeats, args.large_repeats, args.profile_runs, Path(folder))
            flavoured = flavour_rows(args.flavour_nodes, flavours, args.flavour_repeats, Path(folder))
        except NotVerified as exc:
            print(f"\n{exc}", file=sys.stderr)
            return 1

    stage_header = " ".join(f"{stage + ' s':>15s}" for stage in STAGES)
    if rows:
        print("Generated decoder, legacy-export flavour (opset 17, shape chains), converted at fp32 and verified by "
              "value; medians, wall clock (measured), this process")
        print()
        print(f"{'nodes':>7s} {'blocks':>6s} {'folded':>6s} {'runs':>4s} {'total s':>8s} {stage_header} "
              f"{'ORT session s':>13s} {'total/ORT':>9s}")
        for nodes, layers, folded, runs, total, stages, session in rows:
            print(f"{nodes:7d} {layers:6d} {folded:6d} {runs:4d} {total:8.2f} {stage_columns(stages)} "
                  f"{session:13.3f} {total / session:9.2f}")
        print()
        print("CPU reference profile (ONNX Runtime), layers grouped by block:")
        for nodes, family, summary in blocks:
            print(f"  {nodes} nodes: {len(family.group_ids)} blocks in {family.name}; {summary}")
    if flavoured:
        if rows:
            print()
        print("Generated decoder by flavour, converted at fp32 (iOS18) and verified by value (MIL reference "
              "evaluator against ONNX Runtime); medians, wall clock (measured), this process")
        print()
        print(f"{'flavour':15s} {'nodes':>6s} {'blocks':>6s} {'runs':>4s} {'total s':>8s} {stage_header} "
              f"{'ORT session s':>13s} {'total/ORT':>9s} {'worst rel err':>13s}")
        for name, count, layers, runs, total, stages, session, worst in flavoured:
            print(f"{name:15s} {count:6d} {layers:6d} {runs:4d} {total:8.2f} {stage_columns(stages)} "
                  f"{session:13.3f} {total / session:9.0f} {worst:13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
