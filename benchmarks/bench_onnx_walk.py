"""The ONNX importer's node walk and value building, this checkout against another, in one process.

    python3 -m benchmarks.bench_onnx_walk --before CHECKOUT [--runs 7] [MODEL.onnx ...]

For each model (the light models of onnx/backend/test/data, and any given): the model is parsed
once, then `ModelBuilder._walk_nodes` (reading the nodes from the protobuf) and `ModelBuilder._graph`
(building the values around them, from a value-type table made beforehand) run --runs times with
this checkout's importers/onnx.py and the other checkout's (loaded as a second module, against this
checkout's engine.ir), alternated so a busy minute hits both; garbage collection off while timing.
Figures are CPU seconds (process time, measured): median and minimum of the runs; the ratio is
before / this on the minimums (above 1: this checkout is faster).  Shape inference and the parse
are not in these figures (the app runs inference beside the walk in its helper process).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from importers.onnx_proto import ModelProto


def _light_models() -> list[Path]:
    onnx_package = Path(importlib.util.find_spec("onnx").origin).parent  # found, not imported
    return sorted((onnx_package / "backend" / "test" / "data" / "light").glob("*.onnx"))


def _module_of(checkout: str):
    spec = importlib.util.spec_from_file_location("importers_onnx_before", Path(checkout) / "importers" / "onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(path: Path, modules: dict, runs: int) -> dict:
    proto = ModelProto.FromString(path.read_bytes())
    prepared = {}
    for label, module in modules.items():
        builder = module.ModelBuilder(proto, path, {}, {})
        inferred = module._Inferred(module.value_type_table(proto.graph), proto.graph.node)
        prepared[label] = (builder, inferred, builder._weights(proto.graph))
    times = {(label, part): [] for label in modules for part in ("walk", "graph")}
    gc.disable()
    try:
        for _ in range(runs):
            for label, (builder, inferred, weights) in prepared.items():
                start = time.process_time()
                walked = builder._walk_nodes(proto.graph)
                times[label, "walk"].append(time.process_time() - start)
                start = time.process_time()
                builder._graph(proto.graph, True, walked, inferred, weights)
                times[label, "graph"].append(time.process_time() - start)
                builder.warnings.clear()
                del walked
                gc.collect()
    finally:
        gc.enable()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--before", metavar="CHECKOUT", required=True, help="the checkout to compare with")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    import importers.onnx as this

    modules = {"before": _module_of(args.before), "this": this}
    print(f"ONNX node walk and values, CPU s (measured, process time), {args.runs} alternated runs; "
          f"ratio = before / this on minimums")
    header = (f"{'model':28s} {'nodes':>7s} | {'walk before':>11s} {'walk this':>10s} {'ratio':>5s} | "
              f"{'values before':>13s} {'values this':>11s} {'ratio':>5s} | {'both ratio':>10s}")
    print(header)
    print("-" * len(header))
    for path in _light_models() + list(args.models):
        times = measure(path, modules, args.runs)
        low = {key: min(values) for key, values in times.items()}
        median = {key: statistics.median(values) for key, values in times.items()}
        nodes = len(ModelProto.FromString(path.read_bytes()).graph.node)

        def cell(label, part):
            return f"{median[label, part]:.4f}/{low[label, part]:.4f}"

        both = (low["before", "walk"] + low["before", "graph"]) / (low["this", "walk"] + low["this", "graph"])
        print(f"{path.name[:28]:28s} {nodes:7d} | {cell('before', 'walk'):>11s} {cell('this', 'walk'):>10s} "
              f"{low['before', 'walk'] / low['this', 'walk']:5.2f} | {cell('before', 'graph'):>13s} "
              f"{cell('this', 'graph'):>11s} {low['before', 'graph'] / low['this', 'graph']:5.2f} | {both:10.2f}")
    print("cells: median/minimum CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
