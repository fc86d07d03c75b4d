"""Open + analyse time and peak memory: light zoo, a 10,000-node model, a ~300 MB model.

    python3 benchmarks/bench_open_analyse.py [--repeat 5] [--skip-large]

Each model is measured in a fresh subprocess so peak memory (ru_maxrss) is
its own.  The reference is `onnx.load` of the same file in that same process
(a full parse, the way most tools open a model): the ratio column is ours /
reference.  Targets (issue 2): DenseNet-121 < 0.3 s, 10,000 nodes < 3 s, peak
memory for the 300 MB model < 1.5 x its file size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import json, statistics, sys, time
path, repeat = sys.argv[1], int(sys.argv[2])
import onnx
from importers import open_model
from engine.analysis import analyze

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

base_rss = status("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) so imports do not count
times = []
for _ in range(repeat):
    start = time.perf_counter()
    analysis = analyze(open_model(path))
    times.append(time.perf_counter() - start)
peak_rss = status("VmHWM")
del analysis
ref_times = []
for _ in range(min(repeat, 3)):
    start = time.perf_counter()
    proto = onnx.load(path)
    ref_times.append(time.perf_counter() - start)
    del proto
print(json.dumps({"median_s": statistics.median(times), "ref_median_s": statistics.median(ref_times),
                  "peak_increase_bytes": peak_rss - base_rss, "nodes": None}))
"""


def measure(path: Path, repeat: int) -> dict:
    result = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(repeat)], capture_output=True,
                            text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def make_chain_model(path: Path, nodes: int) -> None:
    """A residual chain of Conv/BatchNorm/Relu/Add blocks, `nodes` nodes in all."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels, size = 8, 16
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])
    rng = np.random.default_rng(0)
    graph_nodes, inits, current = [], [], "x"
    for block in range(nodes // 4):
        p = f"b{block}"
        inits += [numpy_helper.from_array(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32), f"{p}.w")]
        inits += [numpy_helper.from_array(np.ones(channels, np.float32), f"{p}.{n}") for n in ("s", "b", "m", "v")]
        graph_nodes += [
            helper.make_node("Conv", [current, f"{p}.w"], [f"{p}.c"], name=f"/{p}/conv/Conv", pads=[1] * 4),
            helper.make_node("BatchNormalization", [f"{p}.c"] + [f"{p}.{n}" for n in "sbmv"], [f"{p}.n"],
                             name=f"/{p}/bn/BatchNormalization"),
            helper.make_node("Relu", [f"{p}.n"], [f"{p}.r"], name=f"/{p}/Relu"),
            helper.make_node("Add", [f"{p}.r", current], [f"{p}.y"], name=f"/{p}/Add"),
        ]
        current = f"{p}.y"
    y = helper.make_tensor_value_info(current, TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(graph_nodes, "chain", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def make_large_weights_model(path: Path, megabytes: int = 300) -> None:
    """A stack of MatMuls whose float32 weights add up to about `megabytes` MB, stored in the file."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = 4
    width = int((megabytes * 1e6 / layers / 4) ** 0.5)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(np.full((width, width), 0.001 * (i + 1), np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"], name=f"/layer{i}/MatMul"))
        current = f"h{i}"
    y = helper.make_tensor_value_info(current, TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "large", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-large", action="store_true", help="skip the ~300 MB model")
    args = parser.parse_args()

    import onnx
    light = sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        chain = Path(tmp) / "chain_10000.onnx"
        make_chain_model(chain, 10_000)
        models = [(p.stem.replace("light_", ""), p) for p in light] + [("chain (10,000 nodes)", chain)]
        if not args.skip_large:
            large = Path(tmp) / "large_weights.onnx"
            make_large_weights_model(large)
            models.append(("large weights (~300 MB)", large))
        print(f"{'model':<26} {'file MB':>9} {'open+analyse s':>15} {'onnx.load s':>12} {'ratio':>7} "
              f"{'peak +MB':>9} {'peak/file':>10}")
        for name, path in models:
            figures = measure(path, args.repeat)
            size = path.stat().st_size
            ratio = figures["median_s"] / figures["ref_median_s"] if figures["ref_median_s"] else float("nan")
            print(f"{name:<26} {size / 1e6:>9.2f} {figures['median_s']:>15.3f} {figures['ref_median_s']:>12.3f} "
                  f"{ratio:>7.2f} {figures['peak_increase_bytes'] / 1e6:>9.1f} "
                  f"{figures['peak_increase_bytes'] / size:>10.2f}")


if __name__ == "__main__":
    main()
