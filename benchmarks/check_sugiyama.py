"""igraph's Sugiyama on the inputs that broke it, called directly and through engine.layout.

Each input is laid out CALLS times in each of PROCESSES child processes (a crash ends a child,
not this script), with other allocations in between.  The table counts crashed processes, calls
that returned garbage bends (not finite, or more bends than the edge skips layers), and distinct
answers over all calls.  Inputs:
- kv level: a folded level of the per-head QDQ transformer (its two K/V heads are separate
  chains with skip edges: igraph 1.0 misroutes graphs of several pieces);
- lone vertices: a chain with a skip edge beside 100,000 unconnected vertices;
- wide star: one vertex feeding 100,000 (a layer that deep in igraph's recursion).

usage: PYTHONPATH=. python3 benchmarks/check_sugiyama.py [--calls 200] [--processes 10]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, pickle, random, sys
import numpy as np
count, pairs, layers = pickle.load(open(sys.argv[1], "rb"))
calls, ours = int(sys.argv[2]), sys.argv[3] == "ours"
import igraph
from engine.layout import sugiyama_columns
skipped = np.maximum(np.abs(layers[pairs[:, 1]] - layers[pairs[:, 0]]) - 1, 0)
answers, garbage, junk = set(), 0, []
for _ in range(calls):
    junk.append([random.random() * 1e250 for _ in range(random.randint(1, 3000))])  # churn the heap
    if len(junk) > 20:
        junk.pop(random.randrange(len(junk)))
    if ours:
        columns, counts, points = sugiyama_columns(count, pairs, layers)
    else:
        result = igraph.Graph(n=count, edges=pairs.tolist(), directed=True).layout_sugiyama(
            layers=layers.tolist(), maxiter=20)
        columns = np.array([xy[0] for xy in result.coords])
        counts = np.array([len(route) for route in result.edge_routing])
        points = np.array([xy for route in result.edge_routing for xy in route], dtype=float).reshape(-1, 2)
    if not np.isfinite(points).all() or (counts > skipped).any():
        garbage += 1
    answers.add(hashlib.sha1(columns.tobytes() + counts.tobytes() + points.tobytes()).hexdigest())
print(json.dumps({"answers": sorted(answers), "garbage": garbage}))
"""


def kv_level_input(folder: Path):
    from engine.analysis import analyze
    from engine.folded_layout import FoldedLayouts
    from engine.grouping import namespace_groups
    from engine.transformer_samples import TransformerConfig, write_transformer
    from importers import open_model

    config = TransformerConfig(layers=1, hidden=64, heads=4, kv_heads=2, intermediate=96, vocab=50, past=5,
                               style="per_head_qdq")
    analysis = analyze(open_model(str(write_transformer(folder / "decoder.onnx", config))))
    level = FoldedLayouts(analysis, namespace_groups(analysis), True).level(
        "group:namespace:model/layers.0/self_attn/kv.0")
    # What layout_nodes handed igraph: vertices in box order, edges in drawing order.
    index = {box: k for k, box in enumerate(level.boxes)}
    pairs = np.array([(index[e.source], index[e.target]) for e in level.edges], dtype=np.int64)
    return len(index), pairs, np.array([level.layers[box] for box in level.boxes], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--processes", type=int, default=10)
    args = parser.parse_args()
    n = 100_000
    with tempfile.TemporaryDirectory() as folder:
        inputs = {
            "kv level": kv_level_input(Path(folder)),
            "lone vertices": (3 + n, np.array([(0, 1), (1, 2), (0, 2)]), np.array([0, 1, 2] + [0] * n)),
            "wide star": (n + 1, np.array([(0, k) for k in range(1, n + 1)]), np.array([0] + [1] * n)),
        }
        print(f"| input | vertices | edges | caller | processes x calls | crashed processes | garbage calls "
              f"| distinct answers |\n|---|---|---|---|---|---|---|---|")
        for name, (count, pairs, layers) in inputs.items():
            path = Path(folder) / "input.pkl"
            path.write_bytes(pickle.dumps((count, pairs, layers)))
            calls = args.calls if count < 1000 else max(1, args.calls // 100)
            for caller in ("igraph", "ours"):
                crashed, garbage, answers = 0, 0, set()
                for _ in range(args.processes):
                    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(calls), caller],
                                          capture_output=True, text=True, cwd=ROOT,
                                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
                    if done.returncode != 0:
                        crashed += 1
                        continue
                    found = json.loads(done.stdout)
                    garbage += found["garbage"]
                    answers.update(found["answers"])
                label = "igraph directly" if caller == "igraph" else "engine.layout.sugiyama_columns"
                print(f"| {name} | {count} | {len(pairs)} | {label} | {args.processes} x {calls} | {crashed} "
                      f"| {garbage} | {len(answers)} |")


if __name__ == "__main__":
    main()
