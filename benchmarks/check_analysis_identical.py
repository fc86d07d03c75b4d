"""Issue 14: is `engine.analysis.analyze` of this checkout identical, figure for figure, to another
checkout's?  A check, not a timing: run it after changing the analysis.

    python3 benchmarks/check_analysis_identical.py --before CHECKOUT [--skip-zoo] [--by-index] [MODEL ...]

Models: every model.onnx / *.onnx under the onnx package's backend test data (light zoo,
pytorch-converted, pytorch-operator, simple), tests/data's .pt2 and .tflite files, the mobileunet
sample (a decoder: every stage kind), small transformers of both styles and flavours, and MODEL
paths given (e.g. bench_big_open's generated 20k / 100k models).  Each checkout's child imports
every model with that checkout's code and analyses every graph of it; the parent compares the
digests section by section (order, per-node metrics, stages, totals, conventions) and prints a
table of models per result.  Exit status 1 when anything differs.  --by-index analyses every
model of this checkout on index arrays (engine.analysis.graph_index), as graphs of
INDEX_FROM_NODES nodes and more are, instead of by name as small graphs are.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SECTIONS = ("order", "nodes", "stages", "totals", "conventions")


def digest(analysis) -> dict[str, str]:
    """sha256 per section of everything a ModelAnalysis holds (every NodeMetrics field, in order)."""
    def sha(value) -> str:
        return hashlib.sha256(repr(value).encode()).hexdigest()[:16]

    t = analysis.totals
    fields = ("node_id", "op_type", "order", "is_constant", "params", "param_bytes", "buffers", "macs", "flops",
              "output_bytes", "bytes_moved", "arithmetic_intensity", "spatial_size", "stage")
    return {
        "order": sha(tuple(analysis.order)),
        "nodes": sha([(key, tuple(getattr(m, f) for f in fields)) for key, m in analysis.nodes.items()]),
        "stages": sha([(s.name, s.kind, s.node_ids, s.macs, s.flops, s.params) for s in analysis.stages]),
        "totals": sha((t.nodes, t.compute_nodes, t.constant_nodes, t.params, sorted(t.params_by_dtype.items()),
                       list(t.params_by_dtype), t.buffers, t.weight_bytes, t.macs, t.flops,
                       t.peak_activation_bytes, t.peak_node_id, t.unknown_cost_nodes)),
        "conventions": sha(sorted(analysis.conventions.items())),
    }


def child(list_file: str, by_index: bool) -> None:
    from engine import analysis
    from importers import open_model

    def analyze(model, index):
        if by_index:
            with analysis.collector_paused():
                return analysis._analyze(model, index, by_index=True)
        return analysis.analyze(model, index)

    results = {}
    for path in Path(list_file).read_text().splitlines():
        try:
            model = open_model(path)
            results[path] = [digest(analyze(model, index)) for index in range(len(model.graphs))]
        except Exception as error:  # the comparison reports it; both checkouts should fail alike
            results[path] = f"error: {type(error).__name__}: {error}"
    print("RESULT " + json.dumps(results))


def model_paths(workdir: Path, extra: list[str], skip_zoo: bool) -> list[str]:
    import onnx

    from engine.samples import write_sample
    from engine.transformer_samples import FLAVOURS, STYLES, TransformerConfig, flavour_model, write_transformer

    paths = []
    if not skip_zoo:
        zoo = Path(onnx.__file__).parent / "backend" / "test" / "data"
        paths += sorted(str(p) for p in zoo.rglob("*.onnx"))
    data = Path(__file__).resolve().parents[1] / "tests" / "data"
    paths += sorted(str(p) for p in data.rglob("*") if p.suffix in (".pt2", ".tflite"))
    paths.append(str(write_sample("mobileunet", workdir / "mobileunet.onnx", alpha=0.25, size=64)))
    for style in STYLES:
        paths.append(str(write_transformer(workdir / f"{style}.onnx", TransformerConfig(layers=2, style=style))))
    for flavour, quantized in [(flavour, False) for flavour in FLAVOURS] + [("microsoft", True)]:
        path = workdir / f"{flavour}{'_q' if quantized else ''}.onnx"
        onnx.save_model(flavour_model(TransformerConfig(layers=2), flavour, quantized=quantized), str(path))
        paths.append(str(path))
    return paths + [str(Path(p).resolve()) for p in extra]


def run_child(checkout: str, list_file: Path, by_index: bool = False) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(list_file)] + (["--by-index"] if by_index else [])
    done = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, timeout=3600)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the child on {checkout} failed:\n{done.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="more model files to compare")
    parser.add_argument("--before", metavar="CHECKOUT", help="the checkout to compare with (e.g. a checkout of main)")
    parser.add_argument("--skip-zoo", action="store_true", help="leave out the onnx package's test models")
    parser.add_argument("--by-index", action="store_true",
                        help="analyse every model of this checkout on index arrays, whatever its size")
    parser.add_argument("--child", metavar="LIST", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.by_index)
        return 0
    if not args.before:
        parser.error("--before CHECKOUT is required")
    here = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, here)
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-analysis-check-"))
    list_file = workdir / "models.txt"
    list_file.write_text("\n".join(model_paths(workdir, args.models, args.skip_zoo)))
    this, before = run_child(here, list_file, args.by_index), run_child(str(Path(args.before).resolve()), list_file)
    identical, errors_alike, differing = [], [], []
    for path in this:
        mine, theirs = this[path], before.get(path)
        if mine == theirs:
            (errors_alike if isinstance(mine, str) else identical).append(path)
        else:
            if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
                sections = sorted({s for a, b in zip(mine, theirs) for s in SECTIONS if a[s] != b[s]})
                differing.append((path, "differs in " + ", ".join(sections)))
            else:
                differing.append((path, f"this: {str(mine)[:80]}; before: {str(theirs)[:80]}"))
    how = "on index arrays" if args.by_index else "as analyze() chooses"
    print(f"Analysis of this checkout ({how}) against {args.before} ({len(this)} models, every graph of each)")
    print(f"{'result':24} {'models':>6}")
    print(f"{'identical':24} {len(identical):6d}")
    print(f"{'same import error':24} {len(errors_alike):6d}")
    print(f"{'DIFFERENT':24} {len(differing):6d}")
    for path, why in differing:
        print(f"  {path}: {why}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
