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

from engine.files import write_text_atomically

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
            write_text_atomically(args.json, text)
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
    return _run_app("the headless commands work without one: layerscope inspect MODEL, layerscope --help",
                    args.model)


def _run_app(no_display_advice: str, model, **options) -> int:
    """Start the desktop app, or say in one line that there is no display and what to use instead."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) \
            and os.environ.get("QT_QPA_PLATFORM") not in ("offscreen", "minimal"):
        print(f"layerscope: no display found; {no_display_advice}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        from gui.app import run_app
    except ImportError as exc:
        raise CliError(f"the desktop app is not available: {exc}")
    return run_app(model, **options)


VIEW_OVERLAYS = ("none", "time", "compute_unit", "transfer", "macs", "params", "output_bytes",
                 "arithmetic_intensity")
PROFILE_OVERLAYS = ("time", "compute_unit", "transfer")  # need --profile


def cmd_view(args: argparse.Namespace) -> int:
    """Open the app on MODEL, or with --screenshot render the main window offscreen to a PNG."""
    profile = None
    if getattr(args, "profile", None):
        from engine.profile import ProfileFormatError
        from engine.session import load_profile_json
        try:
            profile = load_profile_json(args.profile)
        except ProfileFormatError as exc:
            raise CliError(f"--profile: {exc}")
    elif args.overlay in PROFILE_OVERLAYS:
        raise CliError(f"--overlay {args.overlay} needs --profile P.json "
                       "(write one with: layerscope profile MODEL --json P.json)")
    if args.screenshot:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        try:
            from gui.app import render_screenshot  # Qt only now: engine never imports it at import time
        except ImportError as exc:
            raise CliError(f"the desktop app is not available: {exc}")
        try:
            path = render_screenshot(args.model, args.screenshot, overlay=args.overlay, size=args.size,
                                     select=args.select, profile=profile)
        except OSError as exc:
            raise CliError(f"--screenshot {args.screenshot}: {exc}")
        print(f"wrote {path}")
        return EXIT_OK
    return _run_app("use `layerscope view MODEL --screenshot out.png` to render the window offscreen, "
                    "or the headless commands: layerscope inspect MODEL",
                    args.model, overlay=args.overlay, profile=profile)


def _window_size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
        if width < 200 or height < 150:
            raise ValueError
        return width, height
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window size like 1400x900 (at least 200x150)")


def cmd_agent(args: argparse.Namespace) -> int:
    """Serve the bridge protocol (engine.bridge.agent) until Ctrl-C."""
    from engine.bridge.agent import config_from_args, run_agent
    try:
        config = config_from_args(args)
        config.check()
    except ValueError as exc:
        raise CliError(str(exc))
    try:
        return run_agent(config)
    except OSError as exc:
        raise CliError(f"--listen {args.listen}: {exc.strerror or exc}")
    except RuntimeError as exc:  # --advertise without zeroconf
        raise CliError(str(exc))


def cmd_devices(args: argparse.Namespace) -> int:
    """List agents (typed, mDNS) and iPhones on USB; a source that cannot be searched says why."""
    from engine.bridge.discovery import discover, format_devices, to_json
    token = args.token or os.environ.get("LAYERSCOPE_AGENT_TOKEN") or None
    result = discover(addresses=args.agent or (), token=token, mdns=not args.no_mdns, usb=not args.no_usb,
                      timeout=args.timeout, agent_port=args.port)
    print(to_json(result) if args.json else format_devices(result))
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    """ONNX -> Core ML ML Program with a layer map (engine.convert); exit 3 if a check failed."""
    from engine.convert import ConversionError, ImageInput, convert, parse_shape_options

    image_inputs = {}
    if args.image_input:
        try:
            bias = tuple(float(b) for b in args.bias.split(",")) if args.bias else None
        except ValueError:
            raise CliError(f"--bias {args.bias!r}: expected numbers separated by commas, e.g. -1,-1,-1")
        layout = "G" if args.grayscale else ("BGR" if args.bgr else "RGB")
        channels = 1 if layout == "G" else 3
        if bias is None:
            bias = (0.0,) * channels
        elif len(bias) == 1 and channels == 3:
            bias = bias * 3
        image_inputs[args.image_input] = ImageInput(scale=args.scale, bias=bias, color_layout=layout)
    elif args.bias or args.scale != 1.0 or args.bgr or args.grayscale:
        raise CliError("--scale, --bias, --bgr and --grayscale apply to an image input: add --image-input NAME")

    try:
        fixed_shapes, flexible_shapes = parse_shape_options(args.shape)
    except ValueError as exc:
        raise CliError(str(exc))

    def progress(message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)

    try:
        result = convert(args.model, args.output, precision=args.precision, target=args.target,
                         input_shapes=fixed_shapes, flexible_shapes=flexible_shapes, image_inputs=image_inputs,
                         optimize=args.optimize, progress=None if args.quiet else progress)
    except ConversionError as exc:
        raise CliError(str(exc))
    size = sum(f.stat().st_size for f in result.package_path.rglob("*") if f.is_file())
    nodes = len(result.layer_map["nodes"])
    ops = sum(len(v) for v in result.layer_map["nodes"].values())
    print(f"wrote {result.package_path} ({size / 1e6:.2f} MB, {nodes} source nodes -> {ops} MIL ops) "
          f"and {result.layer_map_path.name}")
    print("verification:")
    for line in result.summary_lines():
        print(f"  {line}")
    for warning in result.warnings:
        print(f"layerscope: warning: {warning}", file=sys.stderr)
    return EXIT_OK if result.verified else EXIT_INCOMPLETE


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
                      help="colour the nodes by this figure (default: op category); time, "
                           "compute_unit and transfer come from --profile")
    view.add_argument("--size", type=_window_size_arg, default=(1400, 900), metavar="WxH",
                      help="window size for --screenshot (default 1400x900)")
    view.add_argument("--select", metavar="NODE_ID", help="select this node (fills the inspector)")
    view.add_argument("--profile", metavar="P.json", help="show this layerscope.profile/1 file "
                                                          "(from layerscope profile --json) with the model")
    view.set_defaults(func=cmd_view)

    from engine.cli_profile import add_profile_commands
    add_profile_commands(sub)  # profile, compare

    from engine.bridge.protocol import DEFAULT_MAX_MODEL_BYTES, DEFAULT_CACHE_BYTES, DEFAULT_PORT, MiB
    agent = sub.add_parser("agent", help="serve models to the desktop over the bridge protocol (a device agent)")
    agent.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                       help=f"address to listen on (default 127.0.0.1:{DEFAULT_PORT}, loopback only; "
                            "another address needs --token; port 0 picks a free one)")
    agent.add_argument("--token", help="token clients must present (default: $LAYERSCOPE_AGENT_TOKEN)")
    agent.add_argument("--cache-dir", metavar="DIR", help="where uploaded models are kept (default: a temp folder)")
    agent.add_argument("--max-model-mb", type=float, default=DEFAULT_MAX_MODEL_BYTES / MiB, metavar="N",
                       help=f"largest model accepted, MB (default {DEFAULT_MAX_MODEL_BYTES // MiB})")
    agent.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_BYTES / MiB, metavar="N",
                       help=f"model cache bound, MB, least recently used evicted (default {DEFAULT_CACHE_BYTES // MiB})")
    agent.add_argument("--name", help="device name to report (default: the host name)")
    agent.add_argument("--advertise", action="store_true",
                       help="advertise on the local network over mDNS (_layerscope._tcp; needs zeroconf)")
    agent.set_defaults(func=cmd_agent)

    devices = sub.add_parser("devices", help="list agents (typed addresses, mDNS) and iPhones connected by USB")
    devices.add_argument("--agent", action="append", metavar="HOST:PORT", help="probe this agent (repeatable)")
    devices.add_argument("--token", help="token for the typed agents (default: $LAYERSCOPE_AGENT_TOKEN)")
    devices.add_argument("--timeout", type=float, default=1.5, help="seconds to search each source (default 1.5)")
    devices.add_argument("--port", type=int, default=DEFAULT_PORT, help="agent port on USB devices")
    devices.add_argument("--no-mdns", action="store_true", help="do not search the local network")
    devices.add_argument("--no-usb", action="store_true", help="do not search USB")
    devices.add_argument("--json", action="store_true", help="print JSON instead of text")
    devices.set_defaults(func=cmd_devices)

    convert = sub.add_parser("convert", help="convert an ONNX model to a Core ML ML Program (.mlpackage) "
                                             "with a layer map back to the ONNX nodes")
    convert.add_argument("model", help="the .onnx model")
    convert.add_argument("-o", "--output", required=True, help="the .mlpackage to write (its layer map is "
                                                                "written beside it as NAME.layermap.json)")
    convert.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="default fp16")
    convert.add_argument("--target", default="iOS16", help="minimum deployment target: iOS15..iOS18, "
                                                           "macOS12..macOS15 (default iOS16)")
    convert.add_argument("--shape", action="append", metavar="NAME=DIMS",
                         help="fix an input's shape, e.g. --shape input=1x3x224x224; repeat a NAME to "
                              "enumerate shapes (the first is the default); LOW:HIGH makes an axis a range, "
                              "e.g. input=1x3x128:512x128:512")
    convert.add_argument("--image-input", metavar="NAME", help="make this input an image (camera frames)")
    convert.add_argument("--scale", type=float, default=1.0, help="image input: pixel scale (e.g. 0.003921569)")
    convert.add_argument("--bias", metavar="R,G,B", help="image input: per-channel bias added after scaling")
    convert.add_argument("--bgr", action="store_true", help="image input: BGR channel order")
    convert.add_argument("--grayscale", action="store_true", help="image input: one channel")
    convert.add_argument("--optimize", choices=["exact", "default"], default="exact",
                         help="exact (default): no cross-layer fusion, one ONNX node per MIL op; "
                              "default: coremltools' full optimisation pipeline")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    convert.set_defaults(func=cmd_convert)
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
    from engine.profile import ProfileFormatError
    from engine.targets import TargetError
    try:
        return func(args)
    except (CliError, ModelLoadError, TargetError, ProfileFormatError) as exc:
        print(f"layerscope: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("layerscope: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
