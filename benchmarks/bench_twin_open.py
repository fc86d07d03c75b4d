"""Issue 14: the engine side of a block's first open before any preparation reached it (no Qt).

    python3 -m benchmarks.bench_twin_open [--sizes 20000 100000] [--runs 5] [--model PATH ...]

For each model (bench_group_open's generated single-head QDQ transformers, and any --model
given), folded as the app opens it, then blocks opened whole one after another, each for the
first time, on one engine.folded_layout.FoldedLayouts:

- "twins": a block shaped like one composed before is that block's piece renamed (the default);
- "levels": every block composed from its ~140 levels (`twin_pieces=False`: how every first open
  was composed before), the reference, in the same process, alternated with "twins";
- "first block": the first block opened (no twin block yet; its repeated heads are renamed);
- "next blocks": the median of the next --runs blocks.

Wall clock and thread CPU, collection held as the app holds it during an open (measured); the
machine may be shared: read the ratios.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout


def _opens(analysis, groups, start, twin_pieces: bool, runs: int) -> tuple[list, list]:
    from benchmarks.bench_group_open import _blocks, _inside
    from engine.folded_layout import FoldedLayouts

    loaded = SimpleNamespace(groups=groups)  # what bench_group_open's helpers read of a LoadedModel
    layouts = FoldedLayouts(analysis, groups, include_constants=False, twin_pieces=twin_pieces)
    layouts.compose(start)
    walls, cpus = [], []
    gc.disable()
    try:
        for block in _blocks(loaded)[:runs + 1]:
            collapsed = frozenset(start - _inside(loaded, block))
            wall, cpu = time.perf_counter(), time.thread_time()
            layouts.compose(collapsed)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
    finally:
        gc.enable()
    return walls, cpus


def measure(path: Path, runs: int) -> dict:
    from engine.analysis import analyze
    from engine.grouping import folded_start, namespace_groups
    from importers import open_model

    analysis = analyze(open_model(str(path)))
    groups = namespace_groups(analysis)
    start = folded_start(groups, analysis)
    found = {"twins": [], "levels": []}
    for round_ in range(2):  # alternated: the load of the machine falls on both
        for mode in ("twins", "levels") if round_ == 0 else ("levels", "twins"):
            found[mode].append(_opens(analysis, groups, start, mode == "twins", runs))
    result = dict(model=path.name, nodes=analysis.totals.compute_nodes)
    for mode, rounds in found.items():
        result[mode] = dict(first_wall=statistics.median(r[0][0] for r in rounds),
                            first_cpu=statistics.median(r[1][0] for r in rounds),
                            next_wall=statistics.median(w for r in rounds for w in r[0][1:]),
                            next_cpu=statistics.median(c for r in rounds for c in r[1][1:]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", nargs="*", default=[])
    args = parser.parse_args()
    from benchmarks.bench_group_open import HEADS, HIDDEN, KV_HEADS
    from engine.transformer_samples import TransformerConfig, layers_for_nodes, write_transformer

    workdir = Path(tempfile.mkdtemp(prefix="layerscope-twin-open-"))
    paths = [Path(p) for p in args.model]
    for size in args.sizes:
        dimensions = dict(heads=HEADS, hidden=HIDDEN, kv_heads=KV_HEADS)
        layers = layers_for_nodes(size, "per_head_qdq", **dimensions)
        paths.append(write_transformer(workdir / f"t{size // 1000}k.onnx",
                                       TransformerConfig(layers=layers, style="per_head_qdq", **dimensions)))
    results = [measure(path, args.runs) for path in paths]
    print(f"\nEngine compose of a block's first open, unprepared (seconds, wall / thread CPU; first block, "
          f"median of the next {args.runs} x 2 rounds; measured)")
    print(f"{'model':>12} {'nodes':>7} {'code':>7} {'first wall':>10} {'first CPU':>9} {'next wall':>9} "
          f"{'next CPU':>8} {'next vs levels':>14}")
    for r in results:
        for mode in ("levels", "twins"):
            m = r[mode]
            ratio = m["next_wall"] / r["levels"]["next_wall"]
            print(f"{r['model']:>12} {r['nodes']:7,d} {mode:>7} {m['first_wall']:10.3f} {m['first_cpu']:9.3f} "
                  f"{m['next_wall']:9.3f} {m['next_cpu']:8.3f} {ratio:14.2f}")
    print("levels: every block composed from its levels (twin_pieces=False), the reference, same process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
