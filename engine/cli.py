"""The `layerscope` command.  Everything the app does is reachable headless from here.

Exit codes (docs/cli.md):
  0  done
  2  the input could not be used (bad file, bad option): one line on stderr says why
  3  done, but the analysis is incomplete (unknown ops, inputs without shapes):
     the summary is printed and the warnings name what is missing
  130 interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 2, 3, 130


class CliError(Exception):
    """A problem the person can fix; printed as one line, no traceback."""


def parse_shape_option(items: Optional[Sequence[str]]) -> dict[str, list[int]]:
    """["input=1x3x224x224", ...] -> {"input": [1, 3, 224, 224]}."""
    shapes: dict[str, list[int]] = {}
    for item in items or ():
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.lower().replace(",", "x").split("x")]
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise CliError(f"--shape {item!r}: expected NAME=DIMS with positive sizes, e.g. input=1x3x224x224")
    return shapes


def _default_model() -> Path:
    from engine.samples import default_sample_path
    return default_sample_path()


def cmd_inspect(args: argparse.Namespace) -> int:
    from engine.analysis import analyze
    from engine.inspect import inspect_document, summary_text
    from importers import open_model

    path = Path(args.model) if args.model else _default_model()
    model = open_model(path, input_shapes=parse_shape_option(args.shape))
    if args.graph >= len(model.graphs):
        raise CliError(f"--graph {args.graph}: the model has {len(model.graphs)} graph(s)")
    analysis = analyze(model, graph_index=args.graph)
    if args.json:
        text = json.dumps(inspect_document(analysis), indent=1)
        if args.json == "-":
            print(text)
        else:
            _write_atomically(Path(args.json), text)
            print(f"wrote {args.json}", file=sys.stderr)
    if not args.json or args.json != "-":
        print(summary_text(analysis, top=args.top))
    if analysis.totals.unknown_cost_nodes or any("no shape" in w or "free dimensions" in w
                                                 for w in model.warnings):
        print(f"layerscope: {path}: analysis incomplete: "
              f"{len(analysis.totals.unknown_cost_nodes)} node(s) with unknown cost"
              + ("; " + "; ".join(model.warnings) if model.warnings else ""), file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from engine.samples import write_sample

    size = args.size
    try:
        path = write_sample(args.name, Path(args.output), alpha=args.alpha, size=size,
                            num_classes=args.classes, seed=args.seed, fold_batchnorm=args.fold_batchnorm)
    except ValueError as exc:
        raise CliError(str(exc))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return EXIT_OK


def cmd_gui(args: argparse.Namespace) -> int:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
            and os.environ.get("QT_QPA_PLATFORM") not in ("offscreen", "minimal"):
        print("layerscope: no display found; the headless commands work without one: "
              "layerscope inspect MODEL, layerscope --help", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        from gui.app import run_app
    except ImportError as exc:
        raise CliError(f"the desktop app is not available: {exc}")
    return run_app(args.model)


VIEW_OVERLAYS = ("none", "macs", "params", "output_bytes", "arithmetic_intensity")


def cmd_view(args: argparse.Namespace) -> int:
    """Open the app on MODEL, or with --screenshot render the main window offscreen to a PNG."""
    if args.screenshot:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        try:
            from gui.app import render_screenshot  # Qt only now: engine never imports it at import time
        except ImportError as exc:
            raise CliError(f"the desktop app is not available: {exc}")
        try:
            path = render_screenshot(args.model, args.screenshot, overlay=args.overlay, size=args.size,
                                     select=args.select)
        except OSError as exc:
            raise CliError(f"--screenshot {args.screenshot}: {exc}")
        print(f"wrote {path}")
        return EXIT_OK
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
            and os.environ.get("QT_QPA_PLATFORM") not in ("offscreen", "minimal"):
        print("layerscope: no display found; use `layerscope view MODEL --screenshot out.png` to render "
              "the window offscreen, or the headless commands: layerscope inspect MODEL", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        from gui.app import run_app
    except ImportError as exc:
        raise CliError(f"the desktop app is not available: {exc}")
    return run_app(args.model, overlay=args.overlay)


def _window_size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
        if width < 200 or height < 150:
            raise ValueError
        return width, height
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window size like 1400x900 (at least 200x150)")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerscope",
        description="Profile and visualize neural networks for phones. "
                    "With no command, opens the desktop app (on the bundled sample if no MODEL is given).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = sub.add_parser("inspect", help="print a static summary of a model (params, MACs, memory, stages)")
    inspect.add_argument("model", nargs="?", help="model file (.onnx, .mlmodel, .mlpackage); "
                                                  "default: the bundled MobileUNet sample")
    inspect.add_argument("--json", metavar="FILE", help="write the layerscope.inspect/1 JSON document "
                                                        "to FILE ('-' for stdout, instead of the summary)")
    inspect.add_argument("--shape", action="append", metavar="NAME=DIMS",
                         help="fix an input's shape, e.g. --shape input=1x3x224x224 (repeatable)")
    inspect.add_argument("--graph", type=int, default=0, help="which graph of a pipeline (default 0)")
    inspect.add_argument("--top", type=int, default=10, help="how many heaviest layers to list")
    inspect.set_defaults(func=cmd_inspect)

    sample = sub.add_parser("sample", help="write a generated sample model (random weights)")
    sample.add_argument("name", choices=["mobileunet"])
    sample.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    sample.add_argument("--size", type=_size_arg, default=224, help="input size: 224 or HxW (multiple of 32)")
    sample.add_argument("--classes", type=int, default=1, help="output channels (default 1)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--fold-batchnorm", action="store_true", help="fold BatchNorm into the convs")
    sample.add_argument("-o", "--output", required=True, help="where to write the .onnx file")
    sample.set_defaults(func=cmd_sample)

    view = sub.add_parser("view", help="open the desktop app on a model, or render it to a PNG with --screenshot")
    view.add_argument("model", nargs="?", help="model file; default: the bundled MobileUNet sample")
    view.add_argument("--screenshot", metavar="PNG", help="render the main window offscreen, save it, exit")
    view.add_argument("--overlay", choices=VIEW_OVERLAYS, default="none",
                      help="colour the nodes by this static estimate (default: op category)")
    view.add_argument("--size", type=_window_size_arg, default=(1400, 900), metavar="WxH",
                      help="window size for --screenshot (default 1400x900)")
    view.add_argument("--select", metavar="NODE_ID", help="select this node (fills the inspector)")
    view.set_defaults(func=cmd_view)
    return parser


def _size_arg(text: str):
    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return (int(h), int(w))
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 224 or 256x192")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    if not argv or (argv[0] not in commands and not argv[0].startswith("-")):
        # `layerscope` or `layerscope MODEL`: the desktop app
        args = argparse.Namespace(model=argv[0] if argv else None)
        func = cmd_gui
    else:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        func = args.func
    from engine.ir import ModelLoadError
    try:
        return func(args)
    except (CliError, ModelLoadError) as exc:
        print(f"layerscope: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("layerscope: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
