"""The HTML bottleneck report: time to write it, its size, and its load time in a real browser.

    python3 benchmarks/bench_report.py [--repeat 3] [--sizes 20000 100000] [--browser chromium]

Models: the bundled sample and DenseNet-121 (light zoo), profiled on the CPU
reference (3 runs), and generated residual nets of 20,000 and 100,000 nodes
with timings estimated from their MACs (kind `estimated`: profiling 100,000
kernels takes far longer than the report, and the report's size and speed
do not depend on where the figures came from).

Browser load: the page's script stamps `data-drawn-ms` (performance.now()
after the graph's first drawing: navigation start to a drawn graph, parsing
the page and its data included), read back with headless Chromium's
--dump-dom.  Reference in the same run: the same browser on an empty page
stamped the same way (the browser's own start of a page), so a slow machine
can be told from a slow report.  Budget (issue 15): 100,000 nodes ->
under 5 MB, drawn in under 2 s.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gui_open import residual_model  # noqa: E402


def estimated_profile(analysis, model_path: str):
    """Per-node times from MACs (1 ms per GMAC, spread 0.5-2x by a seeded generator), kind estimated."""
    import numpy as np

    from engine.profile import NodeTiming, Profile, TimingGroup, TimingStats
    rng = np.random.default_rng(0)
    nodes, groups = [], []
    for node_id in analysis.order:
        metrics = analysis.nodes[node_id]
        if metrics.is_constant:
            continue
        stats = TimingStats.from_samples([1e-6 * (metrics.macs or 1000) * float(rng.uniform(0.5, 2.0))],
                                         kind="estimated")
        nodes.append(NodeTiming(node_id, metrics.op_type, metrics.stage, stats, node_id, kind="estimated"))
        groups.append(TimingGroup(node_id, node_id, (node_id,), stats, metrics.op_type))
    return Profile.build(model_path=model_path, model_format="onnx", target={"name": "estimate"}, mode="exact",
                         settings={}, end_to_end_samples=[sum(n.time.median_ms for n in nodes)],
                         profiled_samples=(), groups=groups, nodes=nodes, runs_completed=1)


def measured_profile(path: Path, settings=None):
    """The model at `path` profiled on the CPU reference (exact mode; 3 runs unless `settings`), with its
    hints, and its analysis. Also the tests' way to get a real profile."""
    from engine.analysis import analyze
    from engine.hints import find_hints
    from engine.targets import ProfileSettings, get_target
    from importers import open_model
    settings = settings or ProfileSettings(mode="exact", runs=3, warmup=1, threads=1)
    target = get_target("cpu")
    try:
        target.prepare(str(path), settings)
        profile = target.profile(settings)
    finally:
        target.close()
    analysis = analyze(open_model(path))
    return profile.with_hints(find_hints(profile, analysis)), analysis


def drawn_ms(browser: str, page: Path) -> float:
    with tempfile.TemporaryDirectory() as profile_dir:
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", "--window-size=1400,2000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=300).stdout
    match = re.search(r'data-drawn-ms="(\d+)"', dom)
    if match is None:
        raise RuntimeError(f"{page}: the page did not draw its graph (no data-drawn-ms in the DOM)")
    return float(match.group(1))


def reference_page(path: Path) -> Path:
    """An empty page stamped like the report: what any page costs this browser on this machine."""
    path.write_text("<!DOCTYPE html><html><body><div id='ls-graph'></div><script>"
                    "document.getElementById('ls-graph').setAttribute('data-drawn-ms',"
                    "Math.round(performance.now()))</script></body></html>")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000])
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()

    from engine.analysis import analyze
    from engine.report import write_html
    from engine.samples import default_sample_path
    from importers import open_model
    import onnx

    workdir = Path(tempfile.mkdtemp(prefix="layerscope-bench-report-"))
    cases = []
    sample = default_sample_path()
    cases.append(("sample (MobileUNet), measured", *measured_profile(sample)))
    densenet = Path(onnx.__file__).parent / "backend/test/data/light/light_densenet121.onnx"
    if densenet.exists():
        cases.append(("DenseNet-121 (light zoo), measured", *measured_profile(densenet)))
    for size in args.sizes:
        path = residual_model(workdir / f"residual{size}.onnx", size)
        analysis = analyze(open_model(path))
        cases.append((f"residual net {size:,} nodes, estimated", estimated_profile(analysis, str(path)), analysis))

    print(f"{'model':<40} {'layers':>8} {'write s':>8} {'size MB':>8} {'drawn ms':>9} {'empty page ms':>13} "
          f"{'ratio':>6}")
    for label, profile, analysis in cases:
        writes = []
        page = workdir / "report.html"
        for _ in range(args.repeat):
            started = time.perf_counter()
            write_html(profile, analysis, page)
            writes.append(time.perf_counter() - started)
        size = page.stat().st_size
        drawn = reference = ratio = "-"
        if args.browser:
            ours = statistics.median(drawn_ms(args.browser, page) for _ in range(args.repeat))
            ref = statistics.median(drawn_ms(args.browser, reference_page(workdir / "ref.html"))
                                    for _ in range(args.repeat))
            drawn, reference, ratio = f"{ours:.0f}", f"{ref:.0f}", f"{ours / ref:.2f}" if ref else "-"
        layers = sum(1 for i in analysis.order if not analysis.nodes[i].is_constant)
        print(f"{label:<40} {layers:>8,} {statistics.median(writes):>8.2f} {size / 1e6:>8.2f} {drawn:>9} "
              f"{reference:>13} {ratio:>6}", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
