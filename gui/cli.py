"""The `layerscope` script: the headless commands of engine.cli plus the desktop app.

`layerscope` or `layerscope MODEL` opens the app; `layerscope view` opens it or
renders it offscreen to a PNG; every other command is engine.cli's, unchanged.
Living in gui/ keeps engine/ free of any path to Qt (tests/engine/test_boundaries.py);
Qt itself is imported only when a window is wanted.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import Optional, Sequence

from engine import cli as engine_cli
from engine.cli import EXIT_BAD_INPUT, EXIT_OK, CliError
from engine.gc_pause import collector_paused

VIEW_OVERLAYS = ("none", "time", "compute_unit", "transfer", "macs", "params", "output_bytes",
                 "arithmetic_intensity")
PROFILE_OVERLAYS = ("time", "compute_unit", "transfer")  # need --profile

# Set once `view --screenshot` has written its PNG: `script` may then end the process at once.
_screenshot_written = False


def _display_missing() -> bool:
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
        and os.environ.get("QT_QPA_PLATFORM") not in ("offscreen", "minimal")


def _run_app(no_display_advice: str, model, **options) -> int:
    """Start the desktop app, or say in one line that there is no display and what to use instead."""
    if _display_missing():
        print(f"layerscope: no display found; {no_display_advice}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _check_platform_libraries()
    try:
        with collector_paused():  # as for a screenshot (cmd_view): the imports leave next to no garbage
            import_engine_before_qt()
            from gui.app import run_app
    except ImportError as exc:
        raise CliError(f"the desktop app is not available: {exc}")
    gc.freeze()  # the modules' objects: the app's full collections need not walk them again
    return run_app(model, **options)


def _check_platform_libraries() -> None:
    """Qt aborts the process when its X11 plugin cannot load; say instead what to install."""
    from gui.platform_check import display_problem
    problem = display_problem()
    if problem:
        raise CliError(problem)


def import_engine_before_qt(screenshot: bool = False) -> None:
    """Import what opening a model needs before Qt; for a screenshot, numpy with one BLAS thread.

    PySide6 reads the source of every module imported after it, looking for the text "PySide6"
    (the import hook of its `__feature__` switch, PYSIDE-2029): numpy, igraph, the importers and
    the engine are about 200 modules whose reading costs 30-50 ms if Qt comes first.  Numpy's
    OpenBLAS starts a thread per core when it loads and joins them at exit, 50-100 ms of CPU on a
    2-core machine; a screenshot does no linear algebra, so its process starts OpenBLAS with one
    thread (the variable is restored at once: processes started later are not affected).  The app
    keeps OpenBLAS's default (a conversion checks its values in this process) and lays out large
    graphs in a helper process, so igraph is loaded here only for a screenshot, which lays out in
    this process.
    """
    if screenshot and "numpy" not in sys.modules and "OPENBLAS_NUM_THREADS" not in os.environ:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        try:
            import numpy  # noqa: F401
        finally:
            del os.environ["OPENBLAS_NUM_THREADS"]
    if screenshot:
        import igraph  # noqa: F401
    import engine.analysis  # noqa: F401
    import engine.layout  # noqa: F401
    import engine.session  # noqa: F401
    import importers

    importers.formats()  # the format modules, as the first open imports them


def cmd_app(args: argparse.Namespace) -> int:
    return _run_app("the headless commands work without one: layerscope inspect MODEL, layerscope --help",
                    args.model)


def cmd_view(args: argparse.Namespace) -> int:
    """Open the app on MODEL, or with --screenshot render the main window offscreen to a PNG."""
    profile = None
    if args.profile:
        from engine.profile import ProfileFormatError
        from engine.session import load_profile_json
        try:
            profile = load_profile_json(args.profile)
        except ProfileFormatError as exc:
            raise CliError(f"--profile: {exc}")
    elif args.overlay in PROFILE_OVERLAYS:
        raise CliError(f"--overlay {args.overlay} needs --profile P.json "
                       "(write one with: layerscope profile MODEL --json P.json)")
    if not args.screenshot:
        return _run_app("use `layerscope view MODEL --screenshot out.png` to render the window offscreen, "
                        "or the headless commands: layerscope inspect MODEL",
                        args.model, overlay=args.overlay, profile=profile)
    if _display_missing():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    _check_platform_libraries()
    # No automatic cyclic collection in this short process (engine.gc_pause): its imports and the
    # open triggered ~120 collections, 50 ms, which found under 1,000 objects that reference
    # counting had not freed (ResNet-50).
    with collector_paused():
        try:
            import_engine_before_qt(screenshot=True)
            from gui.app import render_screenshot
        except ImportError as exc:
            raise CliError(f"the desktop app is not available: {exc}")
        try:
            path = render_screenshot(args.model, args.screenshot, overlay=args.overlay, size=args.size,
                                     select=args.select, profile=profile)
        except OSError as exc:
            raise CliError(f"--screenshot {args.screenshot}: {exc}")
    global _screenshot_written
    _screenshot_written = True
    print(f"wrote {path}")
    return EXIT_OK


def _window_size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
        if width < 200 or height < 150:
            raise ValueError
        return width, height
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window size like 1400x900 (at least 200x150)")


def build_parser() -> argparse.ArgumentParser:
    parser = engine_cli.build_parser()
    view = engine_cli.subcommands(parser).add_parser(
        "view", help="open the desktop app on a model, or render it to a PNG with --screenshot")
    view.add_argument("model", nargs="?", help="model file; default: the bundled MobileUNet sample")
    view.add_argument("--screenshot", metavar="PNG", help="render the main window offscreen, save it, exit")
    view.add_argument("--overlay", choices=VIEW_OVERLAYS, default="none", help="colour the nodes by this figure")
    view.add_argument("--size", type=_window_size_arg, default=(1400, 900), metavar="WxH",
                      help="window size for --screenshot (default 1400x900)")
    view.add_argument("--select", metavar="NODE_ID", help="select this node (fills the inspector)")
    view.add_argument("--profile", metavar="P.json", help="show this layerscope.profile/1 file "
                                                          "(needed by the time/compute_unit/transfer overlays)")
    view.set_defaults(func=cmd_view)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0] not in engine_cli.subcommands(parser).choices and not argv[0].startswith("-")):
        # `layerscope` or `layerscope MODEL`: the desktop app
        return engine_cli.run_command(cmd_app, argparse.Namespace(model=argv[0] if argv else None))
    return engine_cli.main(argv, parser=parser)


def script() -> None:
    """The `layerscope` program (pyproject's entry point, `python -m gui`): main(), then exit.

    After `view --screenshot` the process ends with os._exit once stdout and stderr are flushed:
    the PNG is written and closed, and Python's teardown (destroying the Qt objects and the
    modules one by one, 20-30 ms) would only discard what the window kept in memory.
    """
    code = main()
    if _screenshot_written:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    script()
