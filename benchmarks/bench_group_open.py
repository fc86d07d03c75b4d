"""Issue 14: opening one group of a big folded model in the app (offscreen, one process).

    python3 -m benchmarks.bench_group_open [--sizes 20000 100000] [--model PATH] [--runs 3] [--no-prepare]

For each size, a generated single-head QDQ transformer (engine.transformer_samples, 48 heads:
blocks of ~3,000 compute nodes) opened folded in a real MainWindow (or --model, a model that
opens folded with blocks model/layers.N), then one block opened whole (it and its sub-groups:
~3,000 boxes drawn) as a person does it (window.toggle-style relayout in a worker, the scene
built in slices):

- "first": the block has never been opened and its first open was not prepared (the app's
  background preparation, gui.folded_groups, is held off while these opens are measured, as
  when a person opens a block right after the model is shown);
- "cached": the block is closed and opened again (its levels' layouts are reused);
- each figure is from the request to the new scene shown (modelLoaded) plus its first frame
  (`window.grab()`), median of --runs (a different block each first open);
- "stall": the longest gap between ticks of a 10 ms QTimer while it happens (the UI thread
  blocked that long); target 100 ms;
- "prepared": the first open of a block after the app prepared first opens in the background
  (the bench starts the preparation as the app does after a model is shown and waits for it, at
  most PREPARATION_WAIT_S: "prep s", and "prep stall ms" is the UI thread's longest gap while it
  ran); not measured ("-") with --no-prepare or when gui.folded_groups.PREPARE_DELAY_MS is set
  too large for the preparation to start within that wait;
- reference, in the same process: what opening the same block cost before this change, a
  flat `engine.layout.layout_graph` of the whole model with the same groups collapsed (layout
  only: no scene, no frame), median of --runs.

All figures are measured (wall clock); the machine may be shared: compare the ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

HEADS, HIDDEN, KV_HEADS = 48, 3072, 8


def _blocks(loaded) -> list[str]:
    return [g for g, group in loaded.groups.items() if group.title.startswith("layers.")
            and group.parent is not None and loaded.groups[group.parent].title == "model"]


def _inside(loaded, block: str) -> set[str]:
    name = loaded.groups[block].name + "/"
    return {g for g, group in loaded.groups.items() if g == block or group.name.startswith(name)}


# The first and cached opens are measured with the background preparation held off: its delay
# set past any run (a preparation started by an open shown then only waits, and the next open
# stops it).  The preparation section starts it with the delay found (the app's, or a script's).
HELD_OFF_MS = 10**9
PREPARATION_WAIT_S = 120


class PreparationNotFinished(RuntimeError):
    """The background preparation of first opens was still running after PREPARATION_WAIT_S."""


def wait_for_preparation(app, timeout_s: float = PREPARATION_WAIT_S) -> tuple[float, float]:
    """Process events until the background preparation of group opens is over; returns (its
    seconds, the UI thread's longest gap meanwhile).  Raises PreparationNotFinished (naming the
    delay) after `timeout_s`: a preparation that is not coming is never waited for silently."""
    import gui.folded_groups as folded_groups

    start = last = time.perf_counter()
    longest = 0.0
    while folded_groups.preparation_running():
        now = time.perf_counter()
        if now - start > timeout_s:
            raise PreparationNotFinished(
                f"the background preparation of group opens was still running after {timeout_s:.0f} s "
                f"(gui.folded_groups.PREPARE_DELAY_MS = {folded_groups.PREPARE_DELAY_MS:,})")
        app.processEvents()
        time.sleep(0.005)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return time.perf_counter() - start, longest


def preparation_measurable(no_prepare: bool) -> bool:
    """Whether the prepared opens can be measured: not asked off, and the preparation's delay
    (gui.folded_groups.PREPARE_DELAY_MS, which a script may set huge) lets it start in the wait."""
    import gui.folded_groups as folded_groups

    return not no_prepare and folded_groups.PREPARE_DELAY_MS < PREPARATION_WAIT_S * 1000 / 2


def transformer_model(size: int, workdir: Path) -> Path:
    from engine.transformer_samples import TransformerConfig, layers_for_nodes, write_transformer

    dimensions = dict(heads=HEADS, hidden=HIDDEN, kv_heads=KV_HEADS)
    layers = layers_for_nodes(size, "per_head_qdq", **dimensions)
    return write_transformer(workdir / f"t{size // 1000}k.onnx",
                             TransformerConfig(layers=layers, style="per_head_qdq", **dimensions))


def measure(path: Path, runs: int, app, window, prepare: bool = True) -> dict:
    """The figures of one model (see the module's docstring); "prepared" is None unless `prepare`."""
    import gui.folded_groups as folded_groups
    from benchmarks.bench_gui_open import longest_gap
    from engine.layout import layout_graph

    delay = folded_groups.PREPARE_DELAY_MS
    folded_groups.PREPARE_DELAY_MS = HELD_OFF_MS
    try:
        stall_open, seconds_open = longest_gap(app, lambda: window.open_path(str(path)), window.modelLoaded,
                                               timeout_ms=900_000)
        loaded = window.loaded
        if loaded is None or not loaded.groups:
            raise SystemExit(f"{path} did not open folded: nothing to open a block of")
        blocks = _blocks(loaded)
        needed = 2 * runs if prepare else runs
        if len(blocks) < needed:
            raise SystemExit(f"{path} has {len(blocks)} blocks model/layers.N; --runs {runs} needs {needed}")
        nodes = loaded.analysis.totals.compute_nodes

        def open_whole(block: str) -> tuple[float, float]:
            collapsed = frozenset(window.loaded.collapsed - _inside(window.loaded, block))
            start = time.perf_counter()
            stall, _ = longest_gap(app, lambda: window._relayout_groups(collapsed, "Expanding"),
                                   window.modelLoaded, settle_ms=0)
            window.grab()
            return time.perf_counter() - start, stall

        def close(block: str) -> float:
            collapsed = frozenset(window.loaded.collapsed | _inside(window.loaded, block))
            stall, _ = longest_gap(app, lambda: window._relayout_groups(collapsed, "Collapsing"),
                                   window.modelLoaded)
            return stall

        first, cached, stalls, drawn = [], [], [stall_open], []
        for block in blocks[:runs]:
            seconds, stall = open_whole(block)
            first.append(seconds)
            stalls.append(stall)
            drawn.append(sum(1 for b in window.loaded.layout.boxes if b not in loaded.layout.boxes))
            stalls.append(close(block))
            seconds, stall = open_whole(block)
            cached.append(seconds)
            stalls.append(stall)
            stalls.append(close(block))
    finally:
        folded_groups.PREPARE_DELAY_MS = delay
    prepared, seconds_prepare, stall_prepare = [], None, None
    if prepare:
        # As the app does once a folded model is shown (the one waiting with the held-off delay
        # stops); the preparation restarts after each open shown, its blocks stay prepared.
        folded_groups.prepare_group_opens(window.loaded)
        seconds_prepare, stall_prepare = wait_for_preparation(app)
        for block in blocks[runs:2 * runs]:
            seconds, stall = open_whole(block)
            prepared.append(seconds)
            stalls.append(stall)
            stalls.append(close(block))
    folded_groups.cancel_preparation()  # the next model's figures start without it
    block = blocks[0]
    members = sum(1 for n in loaded.groups[block].members if not loaded.analysis.nodes[n].is_constant)
    reference = []
    for _ in range(runs):
        collapsed = frozenset(loaded.collapsed - _inside(loaded, block))
        start = time.perf_counter()
        layout_graph(loaded.analysis, include_constants=False, groups=loaded.groups, collapsed=collapsed)
        reference.append(time.perf_counter() - start)
    return dict(size=nodes, block_nodes=members, drawn=statistics.median(drawn), open_model=seconds_open,
                stall_open=stall_open, first=statistics.median(first), cached=statistics.median(cached),
                stall=max(stalls[1:]), prepared=statistics.median(prepared) if prepared else None,
                prepare=seconds_prepare, stall_prepare=stall_prepare, reference=statistics.median(reference),
                runs=len(first))


def _cell(value: Optional[float], width: int, scale: float = 1.0, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{value * scale:{width}.{digits}f}"


def print_table(results: list[dict], runs: int) -> None:
    print(f"\nOpening one block whole in the app (seconds; median of {runs}; measured, wall clock)")
    print(f"{'model nodes':>11} {'block':>6} {'boxes':>6} {'first':>7} {'prepared':>8} {'cached':>7} "
          f"{'first/cached':>12} {'stall ms':>8} {'ref s':>7} {'first/ref':>9} {'cached/ref':>10} "
          f"{'open model s':>12} {'its stall ms':>12} {'prep s':>6} {'prep stall ms':>13}")
    for r in results:
        print(f"{r['size']:11,d} {r['block_nodes']:6,d} {r['drawn']:6.0f} {r['first']:7.3f} "
              f"{_cell(r['prepared'], 8)} {r['cached']:7.3f} {r['first'] / r['cached']:12.2f} "
              f"{r['stall'] * 1000:8.0f} {r['reference']:7.3f} {r['first'] / r['reference']:9.2f} "
              f"{r['cached'] / r['reference']:10.2f} {r['open_model']:12.1f} {r['stall_open'] * 1000:12.0f} "
              f"{_cell(r['prepare'], 6, digits=1)} {_cell(r['stall_prepare'], 13, 1000, 0)}")
    print("first: never opened, not prepared; prepared: first open after the background preparation.\n"
          "targets: open a ~3,000-node group <= 0.150 s; longest stall while opening or expanding <= 100 ms.\n"
          "ref: the flat relayout of the whole model the app did before (layout only), same process.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="generated transformers of about these many nodes (default 20000 100000)")
    parser.add_argument("--model", action="append", default=[], type=Path,
                        help="also (or, without --sizes, only) this model; it must open folded")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-prepare", action="store_true",
                        help="measure unprepared first and cached opens only (no background preparation)")
    args = parser.parse_args()
    sizes = args.sizes if args.sizes is not None else ([] if args.model else [20_000, 100_000])
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from gui.app import MainWindow

    prepare = preparation_measurable(args.no_prepare)
    if not prepare and not args.no_prepare:
        import gui.folded_groups as folded_groups
        print(f"gui.folded_groups.PREPARE_DELAY_MS is {folded_groups.PREPARE_DELAY_MS:,}: the background "
              f"preparation would not start within {PREPARATION_WAIT_S} s; prepared opens not measured")
    app = QApplication.instance() or QApplication([])
    workdir = Path(tempfile.mkdtemp(prefix="layerscope-group-open-"))
    window = MainWindow(settings=QSettings(str(workdir / "settings.ini"), QSettings.Format.IniFormat),
                        error_dialogs=False)
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    paths = [transformer_model(size, workdir) for size in sizes] + list(args.model)
    try:
        results = [measure(path, args.runs, app, window, prepare) for path in paths]
    except PreparationNotFinished as exc:
        print(f"bench_group_open: {exc}; run with --no-prepare to measure unprepared opens only", file=sys.stderr)
        return 1
    finally:
        window.close()
    print_table(results, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
