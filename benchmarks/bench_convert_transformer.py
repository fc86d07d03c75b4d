"""Converting the generated decoder to Core ML, by flavour and size (issue 17).

    python3 benchmarks/bench_convert_transformer.py [--nodes 5000] [--flavours opset23,microsoft_4bit]
                                                    [--repeats 1]

Flavours (engine.transformer_samples.flavour_model): "opset23" (Attention, RMSNormalization,
RotaryEmbedding of opset 23) and "microsoft" / "microsoft_4bit" (onnxruntime-genai's contrib
ops: SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, RotaryEmbedding,
GroupQueryAttention with seqlens_k from attention_mask, and 4-bit MatMulNBits projections), at
small dimensions (hidden 64, 4 heads, 2 K/V heads, vocabulary 50, 3 new tokens after 5), with
as many blocks as make about --nodes nodes, random weights in the file.  Each is converted at
fp32 for iOS 18 with every check on (the values check runs the program on the MIL reference
evaluator against ONNX Runtime); the genai flavours with --assume-full-attention-mask.  The
conversion must verify.

Per flavour, medians over the repeats (measured, wall clock, this process): conversion in total
and its stages (reading and shape fixing, translation = MIL build + coremltools + save,
verification), and the reference: creating an ONNX Runtime session (CPU, default options) for
the same file in the same process, so that "conversion / session creation" stays comparable on a
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
STAGES = {"read+fix": ("read", "check_and_fold"), "translate": ("build", "coremltools", "save"),
          "verify": ("verify",)}


def session_seconds(path: Path) -> float:
    import onnxruntime

    started = time.perf_counter()
    onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return time.perf_counter() - started


def flavour_rows(nodes: int, flavours: list[str], repeats: int, folder: Path) -> list[tuple]:
    """(flavour, nodes, blocks, repeats, median total s, {stage: median s}, median ORT session s, worst rel error)."""
    import onnx

    from engine.convert import convert
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
        totals, sessions, stages, worst = [], [], {stage: [] for stage in STAGES}, 0.0
        for repeat in range(repeats):
            print(f"\r{name} {count} nodes: conversion {repeat + 1}/{repeats}", end="", file=sys.stderr)
            sessions.append(session_seconds(path))
            result = convert(path, folder / f"{name}.mlpackage", precision="fp32", target="iOS18",
                             assume_full_attention_mask=options["flavour"] == "microsoft")
            values = result.verification["values"]
            if result.failed_checks or values["status"] != "passed":
                print(f"\n{name}: conversion did not verify: {result.outcomes()}", file=sys.stderr)
                raise SystemExit(1)
            worst = max(worst, max(e["max_rel_error"] for e in values["outputs"].values()))
            totals.append(result.timings["total"])
            for stage, keys in STAGES.items():
                stages[stage].append(sum(result.timings[key] for key in keys))
        print(file=sys.stderr)
        rows.append((name, count, layers, repeats, statistics.median(totals),
                     {stage: statistics.median(times) for stage, times in stages.items()},
                     statistics.median(sessions), worst))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000, help="about how many nodes per model")
    parser.add_argument("--flavours", default="opset23,microsoft_4bit",
                        help=f"comma-separated, of: {', '.join(FLAVOURS)}")
    parser.add_argument("--repeats", type=int, default=1, help="conversions per flavour")
    args = parser.parse_args()
    flavours = [f for f in args.flavours.split(",") if f]
    unknown = [f for f in flavours if f not in FLAVOURS]
    if unknown:
        parser.error(f"unknown flavour(s) {', '.join(unknown)}; known: {', '.join(FLAVOURS)}")
    with tempfile.TemporaryDirectory(prefix="layerscope-bench-flavours-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = flavour_rows(args.nodes, flavours, args.repeats, Path(folder))
    print("Generated decoder by flavour, converted at fp32 (iOS18) and verified by value (MIL reference evaluator "
          "against ONNX Runtime); medians, wall clock (measured), this process")
    print()
    print(f"{'flavour':15s} {'nodes':>6s} {'blocks':>6s} {'runs':>4s} {'total s':>8s} "
          + " ".join(f"{stage + ' s':>12s}" for stage in STAGES)
          + f" {'ORT session s':>13s} {'total/ORT':>9s} {'worst rel err':>13s}")
    for name, count, layers, repeats, total, stages, session, worst in rows:
        print(f"{name:15s} {count:6d} {layers:6d} {repeats:4d} {total:8.2f} "
              + " ".join(f"{stages[stage]:12.2f}" for stage in STAGES)
              + f" {session:13.3f} {total / session:9.0f} {worst:13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
