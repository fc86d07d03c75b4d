"""Open time of a PyTorch .pt2 program with 50,000 nodes (and smaller ones), without torch.

    python3 benchmarks/bench_pt2_open.py [--nodes 5000 50000] [--repeat 5]

The program is synthetic but made of real parts: the transformer block of
tests/data/transformer_block.pt2 (24 FX nodes as torch.export 2.13 wrote them, with their
stack traces and nn_module_stack) repeated as `layers.<i>` until the node count is reached,
each block reading the previous one's output and owning its parameters.  It is written to a
temporary .pt2 (the program JSON deflated, as torch.export.save stores it).

Columns: `open` is importers.open_model (zip + JSON + IR); `open + analyse` adds
engine.analysis.analyze.  The reference, in the same process, is json.loads of the same
model.json bytes with the cyclic collector paused (as the importer parses): the floor any
reader of this format pays.  Medians of --repeat runs.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.analysis import analyze  # noqa: E402
from importers import open_model  # noqa: E402

TEMPLATE = ROOT / "tests" / "data" / "transformer_block.pt2"


def synthetic_program(node_count: int) -> bytes:
    """model.json of a stack of transformer blocks with at least `node_count` nodes."""
    with zipfile.ZipFile(TEMPLATE) as archive:
        template = json.loads(archive.read("transformer_block/models/model.json"))
    module = template["graph_module"]
    graph, signature = module["graph"], module["signature"]
    block_nodes, block_tensors = graph["nodes"], graph["tensor_values"]
    parameters = [spec for spec in signature["input_specs"] if "parameter" in spec]
    block_input = "x"
    block_output = graph["outputs"][0]["as_tensor"]["name"]

    nodes, tensors, specs = [], {"x": block_tensors["x"]}, []
    previous = "x"
    blocks = -(-node_count // len(block_nodes))
    for index in range(blocks):
        renamed = {name: (previous if name == block_input else f"{name}_l{index}") for name in block_tensors}

        def rename(item):
            if isinstance(item, dict):
                return {key: (renamed.get(value, value) if key == "name" and isinstance(value, str) else rename(value))
                        for key, value in item.items()}
            if isinstance(item, list):
                return [rename(value) for value in item]
            return item

        for node in block_nodes:
            node = rename(copy.deepcopy(node))
            node["name"] = f"{node['name']}_l{index}"
            stack = node["metadata"].get("nn_module_stack", "")
            root, *inner = stack.split(";")
            node["metadata"]["nn_module_stack"] = ";".join(
                [root, f"L__self__layers_{index},layers.{index},__main__.TransformerBlock"]
                + [entry.replace(",", f"_l{index},layers.{index}.", 1) for entry in inner])
            nodes.append(node)
        for name, meta in block_tensors.items():
            if name != block_input:
                tensors[renamed[name]] = meta
        for spec in parameters:
            spec = copy.deepcopy(spec)
            spec["parameter"]["arg"]["name"] = renamed[spec["parameter"]["arg"]["name"]]
            spec["parameter"]["parameter_name"] = f"layers.{index}.{spec['parameter']['parameter_name']}"
            specs.append(spec)
        previous = renamed[block_output]
    specs.append({"user_input": {"arg": {"as_tensor": {"name": "x"}}}})
    graph.update(nodes=nodes, tensor_values=tensors, outputs=[{"as_tensor": {"name": previous}}],
                 inputs=[{"as_tensor": {"name": name}} for name in [s.get("parameter", {}).get("arg", {}).get("name")
                                                                      for s in specs[:-1]] + ["x"]])
    signature.update(input_specs=specs, output_specs=[{"user_output": {"arg": {"as_tensor": {"name": previous}}}}])
    return json.dumps(template).encode()


def write_archive(path: Path, program: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bench/archive_format", "pt2", compress_type=zipfile.ZIP_STORED)
        archive.writestr("bench/models/model.json", program)


def median_seconds(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _parse_without_collection(program: bytes) -> None:
    """json.loads with the cyclic collector paused, as the importer parses: the parsing floor."""
    gc.disable()
    try:
        json.loads(program)
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| nodes | model.json | .pt2 | open | open + analyse | json.loads, no GC (reference) | open / reference |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for count in args.nodes:
            program = synthetic_program(count)
            path = Path(folder) / f"program_{count}.pt2"
            write_archive(path, program)
            model = open_model(path)
            nodes = len(model.main_graph.nodes)
            assert analyze(model).totals.unknown_cost_nodes == (), "the synthetic program must be fully costed"
            opened = median_seconds(lambda: open_model(path), args.repeat)
            analysed = median_seconds(lambda: analyze(open_model(path)), args.repeat)
            reference = median_seconds(lambda: _parse_without_collection(program), args.repeat)
            print(f"| {nodes:,} | {len(program) / 1e6:.1f} MB | {path.stat().st_size / 1e6:.1f} MB "
                  f"| {opened:.2f} s | {analysed:.2f} s | {reference:.2f} s | {opened / reference:.1f}x |")


if __name__ == "__main__":
    main()
