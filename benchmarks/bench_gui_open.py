"""Open-to-first-paint of the desktop app, overlay switch and redraw times (issue 6 budgets).

    python benchmarks/bench_gui_open.py [--runs 3]

Open to first paint = import + analysis + layout (the worker's part, run here in
the same thread) + scene build + the first frame of the main window (QWidget.grab).
Each figure is the median of --runs runs in one process, after one warm-up run on
the sample.  Models: the onnx package's light DenseNet-121, a generated
10,000-node chain (Conv/Relu) and a generated 20,000-node residual net
(Conv/Relu/Add blocks with skip edges).  Also printed: overlay switch on
DenseNet-121 (recolour, and recolour + repaint), a full-window redraw with about
1,000 visible boxes, and the longest event-loop gap while the 20,000-node model
opens through the worker thread (what a person feels as a frozen window).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def chain_model(path: Path, nodes: int) -> Path:
    """Conv/Relu chain, 8 channels at 16x16: a long thin graph (Netron needs ~10 s for one)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w")
    graph_nodes, x = [], "input"
    for i in range(nodes):
        if i % 2 == 0:
            graph_nodes.append(helper.make_node("Conv", [x, "w"], [f"t{i}"], name=f"/layer{i // 2}/conv/Conv",
                                                pads=[1, 1, 1, 1]))
        else:
            graph_nodes.append(helper.make_node("Relu", [x], [f"t{i}"], name=f"/layer{i // 2}/act/Relu"))
        x = f"t{i}"
    return _save(path, graph_nodes, x, [weight])


def residual_model(path: Path, nodes: int) -> Path:
    """Blocks of Conv, Relu, Conv, Add(skip), Relu: 5 nodes per block, skip edges everywhere."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w")
    graph_nodes, x = [], "input"
    for b in range(nodes // 5):
        p = f"/stage{b // 100}/block{b}"
        graph_nodes += [
            helper.make_node("Conv", [x, "w"], [f"{p}/c1"], name=f"{p}/conv1/Conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"{p}/c1"], [f"{p}/r1"], name=f"{p}/act1/Relu"),
            helper.make_node("Conv", [f"{p}/r1", "w"], [f"{p}/c2"], name=f"{p}/conv2/Conv", pads=[1, 1, 1, 1]),
            helper.make_node("Add", [f"{p}/c2", x], [f"{p}/add"], name=f"{p}/Add"),
            helper.make_node("Relu", [f"{p}/add"], [f"{p}/out"], name=f"{p}/act2/Relu"),
        ]
        x = f"{p}/out"
    return _save(path, graph_nodes, x, [weight])


def _save(path: Path, graph_nodes, output: str, initializers) -> Path:
    graph = helper.make_graph(graph_nodes, path.stem,
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 8, 16, 16])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from PySide6.QtCore import QElapsedTimer, QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from engine.samples import default_sample_path
    from gui.app import MainWindow, load_model

    app = QApplication.instance() or QApplication([])
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-bench-"))
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_densenet121.onnx"
    models = [("light DenseNet-121", light, 0.8),
              ("chain 10,000 nodes", chain_model(workdir / "chain10k.onnx", 10_000), 2.0),
              ("residual 20,000 nodes", residual_model(workdir / "residual20k.onnx", 20_000), 4.0)]
    settings = QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(settings=settings, error_dialogs=False)
    window.resize(1400, 900)
    window.show()

    def open_once(path: Path) -> dict:
        start = time.perf_counter()
        loaded = load_model(str(path))
        after_load = time.perf_counter()
        window._on_loaded(loaded, incremental=False)
        after_scene = time.perf_counter()
        window.grab()
        end = time.perf_counter()
        timings = dict(loaded.timings)
        timings.update(worker=after_load - start, scene_ui=after_scene - after_load,
                       first_frame=end - after_scene, total=end - start,
                       nodes=len(loaded.layout.boxes), edges=len(loaded.layout.edges), method=loaded.layout.method)
        return timings

    open_once(default_sample_path())  # warm-up: fonts, imports, caches
    print(f"{'model':24} {'boxes':>6} {'edges':>6} {'import':>7} {'analyse':>8} {'layout':>7} "
          f"{'scene':>7} {'1st frame':>9} {'total':>7} {'budget':>7}  layout method")
    for label, path, budget in models:
        runs = [open_once(path) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("import", "analysis", "layout", "scene",
                                                                    "first_frame", "total")}
        print(f"{label:24} {runs[0]['nodes']:6d} {runs[0]['edges']:6d} {med['import']:7.3f} {med['analysis']:8.3f} "
              f"{med['layout']:7.3f} {med['scene']:7.3f} {med['first_frame']:9.3f} {med['total']:7.3f} "
              f"{budget:7.1f}  {runs[0]['method']}")
    print("seconds, median of", args.runs, "runs; scene = items built on the UI thread")

    # Overlay switch on DenseNet-121.
    open_once(light)
    recolour, repaint = [], []
    for _ in range(args.runs):
        for key in ("macs", "params", "output_bytes", "arithmetic_intensity", "none"):
            start = time.perf_counter()
            window.set_overlay(key)
            middle = time.perf_counter()
            window.view.viewport().grab()
            end = time.perf_counter()
            recolour.append(middle - start)
            repaint.append(end - start)
    print(f"\noverlay switch, DenseNet-121: recolour {statistics.median(recolour) * 1000:.1f} ms, "
          f"recolour + repaint {statistics.median(repaint) * 1000:.1f} ms (median of {len(recolour)}; budget 100 ms)")

    # Redraw of the full window with about 1,000 visible boxes (20,000-node model, zoomed out).
    open_once(models[2][1])
    view, scene = window.view, window.scene
    view.set_scale(0.15)
    view.centerOn(scene.rects[len(scene.rects) // 2, 0], scene.rects[len(scene.rects) // 2, 1])
    visible_rect = view.mapToScene(view.viewport().rect()).boundingRect()
    r = scene.rects
    visible = int(((r[:, 0] + r[:, 2] >= visible_rect.left()) & (r[:, 0] <= visible_rect.right())
                   & (r[:, 1] + r[:, 3] >= visible_rect.top()) & (r[:, 1] <= visible_rect.bottom())).sum())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        view.viewport().grab()
        times.append(time.perf_counter() - start)
    print(f"redraw, {visible} visible boxes at zoom 0.15 (labels off below 0.3): "
          f"{statistics.median(times) * 1000:.1f} ms (budget 30 ms)")
    view.set_scale(0.35)
    visible_rect = view.mapToScene(view.viewport().rect()).boundingRect()
    visible = int(((r[:, 0] + r[:, 2] >= visible_rect.left()) & (r[:, 0] <= visible_rect.right())
                   & (r[:, 1] + r[:, 3] >= visible_rect.top()) & (r[:, 1] <= visible_rect.bottom())).sum())
    times = []
    for _ in range(5):
        start = time.perf_counter()
        view.viewport().grab()
        times.append(time.perf_counter() - start)
    print(f"redraw, {visible} visible boxes at zoom 0.35 (with labels): {statistics.median(times) * 1000:.1f} ms")

    # Longest event-loop gap while opening the 20,000-node model through the worker.
    for label, path, _ in models[1:]:
        gaps, last = [], [time.perf_counter()]
        ticker = QTimer()
        ticker.setInterval(5)

        def tick():
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        ticker.timeout.connect(tick)
        loop = QEventLoop()
        window.modelLoaded.connect(loop.quit)
        ticker.start()
        start = time.perf_counter()
        window.open_path(str(path))
        loop.exec()
        app.processEvents()
        window.grab()
        total = time.perf_counter() - start
        tick()
        ticker.stop()
        window.modelLoaded.disconnect(loop.quit)
        print(f"async open of {label}: {total:.2f} s to first frame, longest UI-thread gap "
              f"{max(gaps) * 1000:.0f} ms (budget 100 ms)")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
