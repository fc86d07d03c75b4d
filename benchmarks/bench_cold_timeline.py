"""Where a cold `layerscope view MODEL --screenshot PNG` spends its time, stage by stage.

    python3 benchmarks/bench_cold_timeline.py [--runs 5] [--before CHECKOUT] [--model M.onnx]

Each run is a fresh process running the real command (`gui.cli.script`) with time marks: the
stages are timed from outside the code (an import hook marks when PySide6 starts loading and
when gui.app has loaded, then wraps gui.app's functions in place), so the start path keeps its
order of imports.  The parent measures interpreter start-up (launch to the first mark) and
teardown (the last mark to the process's end).  Wall and CPU milliseconds (CPU: the child's
time.process_time, all threads) per stage, medians of --runs; with --before, the same model and
stages on another checkout, runs interleaved.  Reference: `python3 -c pass` in the same minutes.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# Runs in the child, before gui.cli: marks (label, wall, cpu) appended to MARKS_FILE as they happen
# (the program ends with os._exit after a screenshot: nothing runs at exit).
CHILD = r'''
import os, sys, time
_marks = open(os.environ["MARKS_FILE"], "a")
def mark(label):
    _marks.write("%s\t%.6f\t%.6f\n" % (label, time.time(), time.process_time()))
    _marks.flush()
mark("interpreter started")

def timed(owner, name, label):
    function = getattr(owner, name)
    def wrapper(*args, **kwargs):
        mark("> " + label)
        try:
            return function(*args, **kwargs)
        finally:
            mark("< " + label)
    setattr(owner, name, wrapper)

def instrument_app(app):
    timed(app, "_application", "QApplication")
    timed(app.MainWindow, "__init__", "window built")
    timed(app, "load_model", "model opened")
    timed(app, "relayout", "layout")
    timed(app.MainWindow, "grab", "grab")
    from PySide6.QtGui import QPixmap
    timed(QPixmap, "save", "PNG written")

def audit(event, args):
    if event == "import" and args[0] == "PySide6" and "PySide6" not in sys.modules:
        mark("Qt import starts")
sys.addaudithook(audit)

import importlib.abc, importlib.util
class AfterGuiApp(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "gui.app":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        original = spec.loader.exec_module
        def exec_module(module):
            original(module)
            mark("gui.app imported")
            instrument_app(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, AfterGuiApp())

sys.argv = ["layerscope"] + sys.argv[1:]
try:
    from gui.cli import script
except ImportError:  # a checkout from before gui.cli.script
    from gui.cli import main
    def script():
        sys.exit(main())
script()
'''

# Stage = from the mark before it to its own mark ("< x" ends stage x; "> x" ends the gap before it).
STAGES = [
    ("interpreter start-up", None, "interpreter started"),
    ("parsing, imports before Qt", "interpreter started", "Qt import starts"),
    ("Qt + gui imports", "Qt import starts", "gui.app imported"),
    ("QApplication", "gui.app imported", "< QApplication"),
    ("window built", "> window built", "< window built"),
    ("show, events", "< window built", "> model opened"),
    ("model import + analysis", "> model opened", "> layout"),
    ("layout", "> layout", "< layout"),
    ("scene, overlay, first paint", "< model opened", "> grab"),
    ("grab", "> grab", "< grab"),
    ("PNG encode + write", "> PNG written", "< PNG written"),
    ("close, exit (teardown)", "< PNG written", None),
]


def one_run(checkout: str, model: Path, png: Path) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".marks") as marks_file:
        env = dict(os.environ, PYTHONPATH=checkout, QT_QPA_PLATFORM="offscreen", MARKS_FILE=marks_file.name)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launched = time.time()
        subprocess.run([sys.executable, "-c", CHILD, "view", str(model), "--screenshot", str(png)],
                       check=True, env=env, cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ended = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        marks = {}
        for line in marks_file.read().splitlines():
            label, wall, cpu = line.split("\t")
            marks.setdefault(label, (float(wall), float(cpu)))
    cpu_total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    marks["launched"] = (launched, 0.0)
    marks["ended"] = (ended, cpu_total)
    result = {"total": ((ended - launched) * 1000, cpu_total * 1000)}
    for stage, start, end in STAGES:
        start_mark, end_mark = marks.get(start or "launched"), marks.get(end or "ended")
        if start_mark and end_mark:
            result[stage] = ((end_mark[0] - start_mark[0]) * 1000, (end_mark[1] - start_mark[1]) * 1000)
    return result


def reference_run() -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall * 1000, ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000


def _default_model() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("onnx")
    return Path(list(spec.submodule_search_locations)[0]) / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", metavar="CHECKOUT", default="", help="also time this checkout (e.g. main)")
    parser.add_argument("--model", type=Path, default=None, help="default: the onnx package's light ResNet-50")
    args = parser.parse_args(argv)
    model = args.model or _default_model()
    checkouts = {"this": str(HERE)}
    if args.before:
        checkouts["before"] = str(Path(args.before).resolve())
    for checkout in checkouts.values():  # an installed package has its .pyc files; so should the checkouts
        subprocess.run([sys.executable, "-m", "compileall", "-q", "engine", "importers", "gui"], check=False,
                       cwd=checkout, stdout=subprocess.DEVNULL)
    runs = {label: [] for label in checkouts}
    references = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.runs):  # interleaved: a busy minute hits every checkout
            references.append(reference_run())
            for label, checkout in checkouts.items():
                runs[label].append(one_run(checkout, model, Path(workdir) / f"{label}.png"))
    ref_wall = statistics.median(w for w, _ in references)
    ref_cpu = statistics.median(c for _, c in references)
    print(f"Cold `layerscope view {model.name} --screenshot` by stage (fresh processes, median of {args.runs}, "
          f"milliseconds; load average {os.getloadavg()[0]:.1f})")
    print(f"reference `python3 -c pass`: wall {ref_wall:.0f} ms, CPU {ref_cpu:.0f} ms")
    header = f"{'stage':44}" + "".join(f" {label + ' wall':>12} {label + ' CPU':>11}" for label in checkouts)
    print(header)
    for stage in [s for s, _, _ in STAGES] + ["total"]:
        cells = []
        for label in checkouts:
            values = [r[stage] for r in runs[label] if stage in r]
            if not values:
                cells.append(f" {'-':>12} {'-':>11}")
                continue
            wall = statistics.median(w for w, _ in values)
            cpu = statistics.median(c for _, c in values)
            cells.append(f" {wall:12.0f} {cpu:11.0f}")
        print(f"{stage:44}" + "".join(cells))
    for label in checkouts:
        wall = statistics.median(r["total"][0] for r in runs[label])
        cpu = statistics.median(r["total"][1] for r in runs[label])
        print(f"{label}: total / reference: wall {wall / ref_wall:.1f}x, CPU {cpu / ref_cpu:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run())
