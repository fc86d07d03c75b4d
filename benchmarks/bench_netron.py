"""Netron against LayerScope: from open to painted graph, the same .onnx files, runs interleaved.

    python3 -m benchmarks.bench_netron [--runs 3] [--big-runs 1] [--nodes 20000] [--netron-path DIR]
                                       [--chromium PATH]

A measurement, not part of CI: it needs Netron (a measuring tool, never a dependency; install it
outside the project's environment: `pip install --target /tmp/netron_pkg netron==9.3.3`, then
pass --netron-path /tmp/netron_pkg or put it on PYTHONPATH) and Chromium (`apt-get install
chromium`).  Without either it says what is missing and exits 0.

How each figure is measured (seconds, median of --runs; each round runs every measurement once,
in turn, so a busy minute on the machine hits all of them):

- Netron, page open to painted graph.  Netron's own Python server (`netron.serve(file,
  browse=False)`) serves the model on localhost, as `netron MODEL` does.  One headless Chromium
  (started once, as a person's browser is already running) is driven over the DevTools protocol
  (its websocket).  Each run opens a fresh tab with the browser cache disabled, so Netron's page
  and scripts load again, sets Netron's cookie-notice cookie (a person who has used Netron
  once has it; without it the page waits for a click) and navigates the tab to the server.  A script added before the page's own
  (Page.addScriptToEvaluateOnNewDocument) checks every 10 ms whether Netron shows its graph (the
  body's class is "default", which Netron sets after rendering, and the graph's node elements
  exist); then it waits two animation frames (the frame holding the graph has been painted) and
  records `performance.now()`, the time since the navigation started.  So the figure includes
  loading the page and its scripts, reading and parsing the model, Netron's layout (in its web
  worker) and the first paint; not the browser's start-up.  Resolution: 10 ms.
- LayerScope cold: `python3 -m gui.cli view MODEL --screenshot PNG` (what `layerscope view`
  runs) in a fresh process, from process start to exit; the PNG written means the window with
  the graph was painted.  Includes Python's start, every import, Qt's start-up and the exit.
- LayerScope in the running app: import, analysis, layout, scene and the first frame
  (bench_gui_open.open_to_first_paint), the app's window already up.  A model above the fold
  threshold opens folded (its namespace groups collapsed), as a person gets it; "whole" lays
  every node out, as Netron does.

Models: the onnx package's light ResNet-50 and a generated decoder-only transformer of about
--nodes nodes (engine.transformer_samples, "optimum" style; weights as sparse external data,
which Netron reads only when a tensor is inspected and LayerScope never reads to open).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnx  # noqa: E402

RESNET50 = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
NETRON_TIMEOUT_S = 900.0  # Netron lays out a 20,000-node graph in minutes on a busy machine

# Runs in the page before Netron's scripts: records when the graph has been painted.
PAINT_WATCH = """
(() => {
  const watch = () => {
    const body = document.body, target = document.getElementById('target');
    const nodes = target ? target.querySelectorAll('.node').length : 0;
    if (body && body.classList.contains('default') && nodes > 0) {
      const shown = performance.now();
      requestAnimationFrame(() => requestAnimationFrame(() => {
        window.__graphPainted = {shown: shown, painted: performance.now(), nodes: nodes};
      }));
      return;
    }
    setTimeout(watch, 10);
  };
  setTimeout(watch, 10);
})();
"""


def missing_tools(netron_path: str, chromium: str) -> list[str]:
    """What this benchmark needs and cannot find (empty: it can run)."""
    missing = []
    if netron_path:
        sys.path.insert(0, netron_path)
    try:
        import netron  # noqa: F401
    except ImportError:
        missing.append("netron (pip install --target /tmp/netron_pkg netron==9.3.3; --netron-path /tmp/netron_pkg)")
    if shutil.which(chromium) is None:
        missing.append(f"{chromium} (apt-get install chromium; or --chromium PATH)")
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        missing.append("websockets (pip install websockets), to drive Chromium")
    return missing


class Chromium:
    """A headless Chromium driven over the DevTools protocol (one browser websocket, flat sessions)."""

    def __init__(self, executable: str, workdir: Path, size: tuple[int, int]):
        from websockets.sync.client import connect

        self.size = size
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={workdir / 'chromium-profile'}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        address = None
        deadline = time.monotonic() + 30
        while address is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            if "DevTools listening on " in line:
                address = line.split("DevTools listening on ", 1)[1].strip()
        if address is None:
            self.process.kill()
            raise RuntimeError(f"{executable} did not open its DevTools port within 30 s")
        self.socket = connect(address, max_size=None, open_timeout=30, ping_interval=None, legacy=True)
        self.next_id = 0
        self.version = self.call("Browser.getVersion")["product"]

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:  # events and other replies are not needed
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def open_to_painted(self, url: str, timeout: float = NETRON_TIMEOUT_S) -> tuple[float, int]:
        """(seconds from navigation start to the painted graph, Netron's node elements) in a fresh tab."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]  # --window-size
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.call("Network.enable", session=session)
            self.call("Network.setCacheDisabled", {"cacheDisabled": True}, session=session)
            # The cookie notice answered, as a person who has used Netron before has (else the
            # page waits for a click on "Accept" before it opens the model).
            self.call("Network.setCookie", {"name": "consent", "value": str(int(time.time() * 1000)), "url": url},
                      session=session)
            self.call("Page.enable", session=session)
            self.call("Page.addScriptToEvaluateOnNewDocument", {"source": PAINT_WATCH}, session=session)
            self.call("Page.navigate", {"url": url}, session=session)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                result = self.call("Runtime.evaluate", {"expression": "window.__graphPainted || null",
                                                        "returnByValue": True}, session=session)
                painted = result.get("result", {}).get("value")
                if painted:
                    return painted["painted"] / 1000.0, int(painted["nodes"])
                time.sleep(0.05)  # the page records the time itself: polling does not change it
            raise TimeoutError(f"Netron did not paint {url} within {timeout:.0f} s")
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def cold_view(model: Path, workdir: Path, fold_nodes: str | None = None) -> float:
    """Seconds from process start to exit of `layerscope view MODEL --screenshot` (wall)."""
    from benchmarks.bench_transformer import _child_run

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    if fold_nodes is not None:
        env["LAYERSCOPE_FOLD_NODES"] = fold_nodes
    command = [sys.executable, "-m", "gui.cli", "view", str(model), "--screenshot", str(workdir / "view.png")]
    return _child_run(command, env)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=20_000, help="size of the generated transformer")
    parser.add_argument("--big-runs", type=int, default=1, help="rounds on the transformer (Netron: minutes each)")
    parser.add_argument("--netron-path", default=os.environ.get("NETRON_PATH", ""),
                        help="directory holding the netron package (pip install --target DIR netron==9.3.3)")
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args()
    missing = missing_tools(args.netron_path, args.chromium)
    if missing:
        print("bench_netron skipped: missing " + "; ".join(missing))
        return 0

    import logging

    import netron
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from benchmarks.bench_gui_open import open_to_first_paint
    from engine.grouping import fold_threshold
    from engine.transformer_samples import TransformerConfig, layers_for_nodes, write_transformer
    from gui.app import MainWindow

    logging.getLogger().addHandler(logging.NullHandler())  # netron logs every request otherwise
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-netron-"))
    layers = layers_for_nodes(args.nodes)
    transformer = write_transformer(workdir / "transformer.onnx", TransformerConfig(layers=layers))
    models = [("ResNet-50 (light zoo)", RESNET50, args.runs),
              (f"transformer {len(onnx.load(str(transformer), load_external_data=False).graph.node):,} nodes",
               transformer, args.big_runs)]
    load_before = os.getloadavg()
    size = (1400, 900)
    browser = Chromium(args.chromium, workdir, size)
    app = QApplication.instance() or QApplication([])
    window = MainWindow(settings=QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat),
                        error_dialogs=False)
    window.resize(*size)
    window.show()
    app.processEvents()
    open_to_first_paint(window, RESNET50)  # warm-up: the app is running and has drawn a model
    rows = []
    try:
        for label, path, runs in models:
            address = netron.serve(str(path), browse=False, address=("127.0.0.1", 0))
            url = f"http://{address[0]}:{address[1]}/"
            samples: dict[str, list[float]] = {}
            nodes_drawn = 0
            for _ in range(runs):
                try:
                    seconds, nodes_drawn = browser.open_to_painted(url)
                except TimeoutError:  # shown as "> timeout"; the LayerScope figures still count
                    seconds = float("inf")
                samples.setdefault("netron", []).append(seconds)
                samples.setdefault("cold", []).append(cold_view(path, workdir))
                samples.setdefault("in-app", []).append(open_to_first_paint(window, path)["total"])
                samples.setdefault("in-app whole", []).append(
                    open_to_first_paint(window, path, grouping="none", collapsed=frozenset())["total"])
            netron.stop(address)
            rows.append((label, {k: statistics.median(v) for k, v in samples.items()}, nodes_drawn, runs))
            print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in samples.items()), flush=True)  # as it goes
    finally:
        window.close()
        browser.close()
    load_after = os.getloadavg()

    import PySide6
    print(f"Netron {netron.__version__} in {browser.version} (headless) against LayerScope (PySide6 "
          f"{PySide6.__version__}), {time.strftime('%Y-%m-%d')}, {platform.platform()}, {os.cpu_count()} CPUs; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"seconds, median of the runs (interleaved); fold threshold {fold_threshold():,} nodes")
    print(f"{'model':28} {'runs':>4} {'Netron':>7} {'LS cold':>8} {'LS in-app':>10} {'LS whole':>9} "
          f"{'Netron/cold':>12} {'Netron/in-app':>14} {'Netron/whole':>13}")
    for label, m, _, runs in rows:
        print(f"{label:28} {runs:4d} {m['netron']:7.2f} {m['cold']:8.2f} {m['in-app']:10.3f} {m['in-app whole']:9.3f} "
              f"{m['netron'] / m['cold']:11.2f}x {m['netron'] / m['in-app']:13.1f}x "
              f"{m['netron'] / m['in-app whole']:12.1f}x")
    print("Netron: navigation start to the frame holding the graph painted (page load included, browser "
          "start-up not); LS cold: `layerscope view MODEL --screenshot` process start to exit; LS in-app: "
          "open to first frame in the running app (folded above the threshold); LS whole: every node laid out")
    print("Netron's drawn node elements (its graph was complete): "
          + ", ".join(f"{label}: {nodes:,}" for label, _, nodes, _ in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
