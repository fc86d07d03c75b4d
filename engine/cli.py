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


STDOUT = "-"
# `--json` alone means stdout; a model file right after it is the model, not where to write.
_MODEL_SUFFIXES = (".onnx", ".mlmodel", ".mlpackage", ".pt2")


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", nargs="?", const=STDOUT, metavar="FILE",
                        help=f"write {what} to FILE, or to stdout with no FILE or '-' "
                             "(the text summary then goes to stderr)")


def take_model_from_json_option(args: argparse.Namespace) -> None:
    """`layerscope inspect --json model.onnx`: argparse gives the model to --json; give it back.

    Without this, the JSON would be written over the model file the person meant to read.
    """
    value = getattr(args, "json", None)
    if value and value != STDOUT and getattr(args, "model", None) is None \
            and Path(value).suffix.lower() in _MODEL_SUFFIXES:
        args.model, args.json = value, STDOUT


def _default_model() -> Path:
    from engine.sample_files import default_sample_path
    return default_sample_path()


def cmd_inspect(args: argparse.Namespace) -> int:
    from engine.analysis import analyze
    from engine.inspect import inspect_document, summary_text
    from importers import open_model

    take_model_from_json_option(args)
    path = Path(args.model) if args.model else _default_model()
    model = open_model(path, input_shapes=parse_shape_option(args.shape))
    if args.graph >= len(model.graphs):
        raise CliError(f"--graph {args.graph}: the model has {len(model.graphs)} graph(s)")
    analysis = analyze(model, graph_index=args.graph)
    if args.json:
        text = json.dumps(inspect_document(analysis), indent=1)
        if args.json == STDOUT:
            print(text)
        else:
            write_text_atomically(args.json, text)
            print(f"wrote {args.json}", file=sys.stderr)
    if args.json != STDOUT:
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


def cmd_agent(args: argparse.Namespace) -> int:
    """Serve the bridge protocol (engine.bridge.agent) until Ctrl-C."""
    from engine.bridge.agent import config_from_args, run_agent
    try:
        config = config_from_args(args)
        config.check()
    except ValueError as exc:
        raise CliError(str(exc))
    remember_team(args)
    try:
        return run_agent(config, announce_token=args.generate_token)
    except OSError as exc:
        raise CliError(f"--listen {args.listen}: {exc.strerror or exc}")
    except (RuntimeError, ValueError) as exc:  # --advertise without zeroconf; a cache folder of another user
        raise CliError(str(exc))


def remember_team(args: argparse.Namespace) -> None:
    """--team ID --save-team: keep the Apple signing team for later iPhone profiles."""
    if getattr(args, "save_team", False):
        from engine.bridge.iphone import save_team_id
        if not args.team:
            raise CliError("--save-team needs --team ID (your 10-character Apple signing team id)")
        print(f"saved the signing team in {save_team_id(args.team)}", file=sys.stderr)


def add_team_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--team", metavar="ID", help="Apple signing team id for ModelRunner on a connected iPhone "
                                                     "(default: $LAYERSCOPE_TEAM_ID, then the saved one)")
    parser.add_argument("--save-team", action="store_true", help="save --team for later runs")


def cmd_devices(args: argparse.Namespace) -> int:
    """List agents (typed, mDNS), iPhones on USB and Android phones over adb; a source that cannot be searched
    says why."""
    from engine.bridge.discovery import discover, format_devices, to_json
    token = args.token or os.environ.get("LAYERSCOPE_AGENT_TOKEN") or None
    result = discover(addresses=args.agent or (), token=token, mdns=not args.no_mdns, usb=not args.no_usb,
                      timeout=args.timeout, agent_port=args.port, android=not args.no_android)
    print(to_json(result) if args.json else format_devices(result))
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    """ONNX -> Core ML ML Program with a layer map (engine.convert); exit 3 if a check failed
    (checks that did not run are listed as "not run" and do not change the exit code)."""
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
                         optimize=args.optimize, progress=None if args.quiet else progress,
                         value_checks=not args.no_value_checks, kv_state=args.kv_state,
                         assume_full_attention_mask=args.assume_full_attention_mask or False,
                         ignore_memory_check=args.ignore_memory_check)
    except ConversionError as exc:
        raise CliError(str(exc))
    size = sum(f.stat().st_size for f in result.package_path.rglob("*") if f.is_file())
    nodes = len(result.layer_map["nodes"])
    ops = sum(len(v) for v in result.layer_map["nodes"].values())
    print(f"wrote {result.package_path} ({size / 1e6:.2f} MB, {nodes} source nodes -> {ops} MIL ops) "
          f"and {result.layer_map_path.name}")
    for entry in result.layer_map.get("kv_state", ()):
        print(f"KV cache state '{entry['state']}' {'x'.join(map(str, entry['shape']))} fp16: replaces input "
              f"{entry['past_input']} (first {entry['past_length']} positions) and output {entry['present_output']}")
    if result.folded_summary():
        print(result.folded_summary())
    for line in result.assumption_lines():
        print(line)
    print("verification:")
    for line in result.summary_lines():
        print(f"  {line}")
    values = result.verification.get("values", {})
    for name, errors in values.get("outputs", {}).items():
        print(f"  output {name}: max abs error {errors['max_abs_error']:.3g}, max rel error "
              f"{errors['max_rel_error']:.3g} (tolerance {values['tolerance']:g})")
    worst = sorted(values.get("layers", ()), key=lambda layer: -layer["max_rel_error"])[:3]
    if worst:
        print("  largest per-layer errors: " + "; ".join(
            f"{layer['node']} ({layer['op_type']}) abs {layer['max_abs_error']:.3g} rel {layer['max_rel_error']:.3g}"
            for layer in worst))
    print(result.verdict())
    for warning in result.warnings:
        print(f"layerscope: warning: {warning}", file=sys.stderr)
    for name in result.failed_checks:
        print(f"layerscope: {args.model}: check '{name}' failed: {result.verification[name]['detail']}",
              file=sys.stderr)
    return EXIT_OK if result.verified else EXIT_INCOMPLETE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerscope",
        description="Profile and visualize neural networks for phones. "
                    "With no command, opens the desktop app (on the bundled sample if no MODEL is given).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = sub.add_parser("inspect", help="print a static summary of a model (params, MACs, memory, stages)")
    inspect.add_argument("model", nargs="?", help="model file (.onnx, .tflite, .mlmodel, .mlpackage, .pt2); "
                                                  "default: the bundled MobileUNet sample")
    add_json_option(inspect, "the layerscope.inspect/1 JSON document")
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

    from engine.cli_profile import add_profile_commands
    add_profile_commands(sub)  # profile, compare
    from engine.cli_numerics import add_numerics_command
    add_numerics_command(sub)

    from engine.bridge.protocol import (DEFAULT_CACHE_BYTES, DEFAULT_LOAD_MEMORY_BYTES, DEFAULT_MAX_MODEL_BYTES,
                                        DEFAULT_PORT, DEFAULT_UPLOAD_EXPIRY_S, MiB)
    agent = sub.add_parser("agent", help="serve models to the desktop over the bridge protocol (a device agent)")
    agent.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                       help=f"address to listen on (default 127.0.0.1:{DEFAULT_PORT}, loopback only; "
                            "another address needs --token; port 0 picks a free one)")
    agent.add_argument("--token", help="token clients must present, at least 16 characters (default: "
                                       "$LAYERSCOPE_AGENT_TOKEN; --token shows in `ps`: prefer --token-file)")
    agent.add_argument("--token-file", metavar="FILE", help="read the token from the first line of FILE")
    agent.add_argument("--generate-token", action="store_true",
                       help="make a random token and print it after the listening address")
    agent.add_argument("--cache-dir", metavar="DIR",
                       help="where uploaded models are kept, private to you (default: the user cache folder, "
                            "~/.cache/layerscope/agent or ~/Library/Caches/layerscope/agent)")
    agent.add_argument("--load-memory-mb", type=float, default=DEFAULT_LOAD_MEMORY_BYTES / MiB, metavar="N",
                       help="tensor memory one load may create (constants folded + peak activations); larger "
                            f"models are refused (default {DEFAULT_LOAD_MEMORY_BYTES // MiB})")
    agent.add_argument("--upload-expiry-s", type=float, default=DEFAULT_UPLOAD_EXPIRY_S, metavar="S",
                       help=f"delete unfinished uploads untouched this long (default {DEFAULT_UPLOAD_EXPIRY_S:.0f})")
    agent.add_argument("--max-model-mb", type=float, default=DEFAULT_MAX_MODEL_BYTES / MiB, metavar="N",
                       help=f"largest model accepted, MB (default {DEFAULT_MAX_MODEL_BYTES // MiB})")
    agent.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_BYTES / MiB, metavar="N",
                       help=f"model cache bound, MB, least recently used evicted (default {DEFAULT_CACHE_BYTES // MiB})")
    agent.add_argument("--name", help="device name to report (default: the host name)")
    agent.add_argument("--advertise", action="store_true",
                       help="advertise on the local network over mDNS (_layerscope._tcp; needs zeroconf)")
    add_team_options(agent)
    agent.set_defaults(func=cmd_agent)

    devices = sub.add_parser("devices", help="list agents (typed addresses, mDNS), iPhones of this Mac, "
                                             "iPhones connected by USB, and Android phones over adb")
    devices.add_argument("--agent", action="append", metavar="HOST:PORT", help="probe this agent (repeatable)")
    devices.add_argument("--token", help="token for the typed agents (default: $LAYERSCOPE_AGENT_TOKEN)")
    devices.add_argument("--timeout", type=float, default=1.5, help="seconds to search each source (default 1.5)")
    devices.add_argument("--port", type=int, default=DEFAULT_PORT, help="agent port on USB devices")
    devices.add_argument("--no-mdns", action="store_true", help="do not search the local network")
    devices.add_argument("--no-usb", action="store_true", help="do not search USB for iPhones")
    devices.add_argument("--no-android", action="store_true", help="do not ask adb for Android phones")
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
    convert.add_argument("--no-value-checks", action="store_true",
                         help="do not compare weights and values with the source (faster on very large models; "
                              "those checks are then reported as not run)")
    convert.add_argument("--kv-state", action="store_true",
                         help="hold the KV cache as Core ML state: each past... input and its present... output "
                              "(past_key/present_key, past_key_values.N.key/present.N.key) become one fp16 state "
                              "updated in place (needs --target iOS18 or later; see docs/conversion.md)")
    convert.add_argument("--assume-full-attention-mask", nargs="?", const="attention_mask", metavar="NAME",
                         help="take the attention-mask input (default name: attention_mask) as all ones: every "
                              "row of the batch attends to its whole sequence, no padding. What the model "
                              "computes from it (GroupQueryAttention's seqlens_k in onnxruntime-genai exports) "
                              "then folds to constants and the program has no such input; the layer map "
                              "records the assumption. Needs the mask's shape (--shape NAME=1xTOTAL) if free")
    convert.add_argument("--ignore-memory-check", action="store_true",
                         help="convert even when the weights kept outside the model file exceed the memory free "
                              "on this computer (refused otherwise, before any is read)")
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


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's subcommand table, for front ends that add commands of their own (gui.cli)."""
    return parser._subparsers._group_actions[0]  # type: ignore[union-attr,return-value]


def main(argv: Optional[Sequence[str]] = None, parser: Optional[argparse.ArgumentParser] = None) -> int:
    """Run a headless command.  The `layerscope` script is gui.cli.main, which adds the app and `view`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser or build_parser()
    if not argv:
        parser.print_help()
        return EXIT_OK
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    return run_command(args.func, args)


def run_command(func, args: argparse.Namespace) -> int:
    """Call a command; problems a person can fix become one line on stderr, never a traceback."""
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
    except OSError as exc:  # an output that cannot be written (no such folder, no permission, disk full)
        if exc.filename is None:
            raise
        print(f"layerscope: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
