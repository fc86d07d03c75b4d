"""Issue 14, engine side: where the time of a big in-app open goes, stage by stage, against a
reference checkout.

    python3 -m benchmarks.bench_big_open [--runs 3] [--before CHECKOUT] [--nodes 100000]

Models (generated here, weights in sparse side files): bench_gui_open's 20,000-node residual net
and a 20,000-node transformer (engine.transformer_samples, Optimum style), opened whole (folding
off), and a --nodes single-head QDQ transformer opened folded, as the app opens it.

Every run is a fresh process (so its peak memory is that open's): a window like the app's (helper
process for shape inference and Sugiyama, garbage collection held while opening as
MainWindow.open_path does), a warm-up open of the sample model, then the model: the worker's
stages as `gui.app.load_model` times them (import, analysis, layout, scene data; "grouping" is
the rest of load_model: grouping by namespace and choosing what starts folded), the scene build
(`_on_loaded`) and the first frame (`grab`).  With --before, the same child runs on the other
checkout's code (PYTHONPATH), runs interleaved with this checkout's so a busy minute hits both;
the ratio is before / this (above 1: this checkout is faster).  Medians of --runs; peak RSS is
ru_maxrss of the child (Qt and the helper's client included; the helper process is not).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("import", "analysis", "grouping", "layout", "scene_data", "scene_build", "first_frame", "total")


def child(model: str, folded: bool) -> None:
    """Open `model` once in an app window and print its stage times and peak memory as JSON."""
    import resource

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not folded:
        os.environ["LAYERSCOPE_FOLD_NODES"] = "0"
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from engine.sample_files import default_sample_path
    from gui.app import MainWindow, load_model
    from gui.responsive import helper_ready, hold_gc, release_gc

    app = QApplication.instance() or QApplication([])
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-bigopen-"))
    window = MainWindow(settings=QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat),
                        error_dialogs=False, helper_process=True)
    helper_ready(timeout=60)
    window.resize(1400, 900)
    window.show()
    app.processEvents()

    def open_once(path: str) -> dict:
        hold_gc()  # as MainWindow.open_path: no full collection while opening and drawing
        try:
            start = time.perf_counter()
            loaded = load_model(path)
            after_load = time.perf_counter()
            window._on_loaded(loaded, incremental=False)
            after_scene = time.perf_counter()
            window.grab()
            end = time.perf_counter()
        finally:
            release_gc()
        timings = dict(loaded.timings)
        recorded = sum(timings.get(k, 0.0) for k in ("import", "analysis", "layout", "scene_data"))
        timings["grouping"] = max(0.0, (after_load - start) - recorded)
        timings.update(scene_build=after_scene - after_load, first_frame=end - after_scene, total=end - start,
                       boxes=len(loaded.layout.boxes), nodes=len(loaded.model.main_graph.nodes))
        return timings

    open_once(str(default_sample_path()))  # warm-up: imports, fonts
    result = open_once(model)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    window.close()
    print("RESULT " + json.dumps(result))


def run_child(checkout: str, model: Path, folded: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout, QT_QPA_PLATFORM="offscreen")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(model)] + (["--folded"] if folded else [])
    done = subprocess.run(command, env=env, cwd=checkout, capture_output=True, text=True, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the child on {checkout} failed:\n{done.stderr[-2000:]}")


def make_models(workdir: Path, nodes: int, only: str = "") -> list[tuple[str, Path, bool]]:
    """(label, generated file, opened folded) of each model whose label contains `only`."""
    from benchmarks.bench_gui_open import residual_model
    from engine.transformer_samples import TransformerConfig, layers_for_nodes, write_transformer

    makers = [
        ("residual net 20k, whole", lambda: residual_model(workdir / "residual20k.onnx", 20_000), False),
        ("transformer 20k, whole", lambda: write_transformer(workdir / "t20k.onnx",
                                                             TransformerConfig(layers=layers_for_nodes(20_000))), False),
        (f"transformer {nodes // 1000}k QDQ, folded",
         lambda: write_transformer(workdir / "big.onnx",
                                   TransformerConfig(layers=layers_for_nodes(nodes, "per_head_qdq"), style="per_head_qdq")),
         True),
    ]
    return [(label, make(), folded) for label, make, folded in makers if only in label]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--before", metavar="CHECKOUT", default="",
                        help="also run the open on this checkout (e.g. a checkout of main) and print ratios")
    parser.add_argument("--only", metavar="TEXT", default="",
                        help="only the models whose label contains TEXT (e.g. residual): more runs in the same minutes")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--folded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folded)
        return 0
    here = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, here)
    checkouts = {"this": here, **({"before": str(Path(args.before).resolve())} if args.before else {})}
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-bigopen-"))
    models = make_models(workdir, args.nodes, args.only)
    print(f"In-app open, stage by stage (wall seconds, median of {args.runs} fresh processes; "
          f"load average at start {os.getloadavg()[0]:.1f})")
    header = f"{'model':32} {'code':6} {'nodes':>7} {'boxes':>6} " + " ".join(f"{s[:8]:>8}" for s in STAGES) + \
        f" {'peak MB':>8}"
    print(header)
    for label, path, folded in models:
        samples: dict[str, list[dict]] = {name: [] for name in checkouts}
        for _ in range(args.runs):
            for name, checkout in checkouts.items():  # interleaved
                samples[name].append(run_child(checkout, path, folded))
        medians = {}
        for name, results in samples.items():
            med = {k: statistics.median(r.get(k, 0.0) for r in results) for k in STAGES + ("peak_rss_mb",)}
            medians[name] = med
            print(f"{label:32} {name:6} {results[0]['nodes']:7d} {results[0]['boxes']:6d} " +
                  " ".join(f"{med[s]:8.3f}" for s in STAGES) + f" {med['peak_rss_mb']:8.0f}")
        if "before" in medians:
            ratio = {s: medians["before"][s] / medians["this"][s] if medians["this"][s] else float("nan")
                     for s in STAGES}
            print(f"{label:32} {'ratio':6} {'':7} {'':6} " + " ".join(f"{ratio[s]:8.2f}" for s in STAGES) +
                  "   (before / this)")
    print("targets (issue 14): 20,000 nodes whole <= 1.0 s; 100,000-node transformer folded <= 3 s and "
          "<= 1,536 MB peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
