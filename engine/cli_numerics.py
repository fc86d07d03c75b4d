"""`layerscope numerics` (registered by engine.cli): where fp16 breaks the model, layer by layer.

    layerscope numerics [MODEL] [--precision fp16] [--mode fp16-storage|fp16-compute]
                        [--inputs random|normal|FILE.npz ...] [--samples N] [--seed N]
                        [--shape NAME=DIMS] [--size HxW] [--tolerance T] [--threads N]
                        [--json out.json] [--report out.html] [--csv out.csv] [--top N]
                        [--target ws://HOST:PORT [--compute-unit UNIT]]

Progress goes to stderr.  Ctrl-C stops after the current layer; the layers
compared so far are summarised and written (exit code 130).  A layer that
fails in the emulation ends the run early with what was compared (exit 3).
docs/numerics.md describes the modes and every figure.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 2, 3, 130


def _figure(value: float, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def numerics_summary(result, top: int = 10) -> str:
    lines = [f"Model       {result.model_path}",
             (f"Compared    {result.kind}: {result.emulation}" if result.mode in ("device", "package")
              else f"Precision   {result.precision}, {result.kind}: {result.emulation}"),
             f"Reference   {result.reference}",
             f"Inputs      {result.inputs}; {result.samples_compared} compared",
             f"Compared    {len(result.layers)} layers ({len(result.not_compared)} not compared: constants or "
             f"no float output); tolerance {result.tolerance:g}"]
    if not result.complete:
        lines.append(f"            INCOMPLETE: {result.error}")
    first = result.layers.get(result.first_departing) if result.first_departing else None
    lines.append("First departing layer  " + (f"{first.node_id} ({first.op_type}): error {_figure(first.error)}, "
                                              f"SNR {_figure(first.snr_db)} dB" if first else "none"))
    overflow = result.layers.get(result.first_overflow) if result.first_overflow else None
    lines.append("First overflow         " + (f"{overflow.node_id} ({overflow.op_type}): reference reaches "
                                              f"{_figure(overflow.largest_reference, 4)}" if overflow else "none"))
    worst = result.worst(top)
    if worst:
        width = min(48, max(len(layer.node_id) for layer in worst))
        lines.append("")
        lines.append(f"Top {len(worst)} layers by error ({result.kind})")
        lines.append(f"  {'layer':<{width}} {'op':<18} {'error':>9} {'max abs':>9} {'cosine':>10} {'SNR dB':>7} "
                     f"{'overflow':>9} {'inf/NaN':>7} {'largest':>9}")
        for layer in worst:
            name = layer.node_id if len(layer.node_id) <= width else "..." + layer.node_id[-(width - 3):]
            lines.append(f"  {name:<{width}} {layer.op_type:<18} {_figure(layer.error):>9} "
                         f"{_figure(layer.max_abs_error):>9} {_figure(layer.cosine, 7):>10} "
                         f"{_figure(layer.snr_db):>7} {100 * layer.overflow_share:8.2f}% "
                         f"{layer.inf_count + layer.nan_count:>7} {_figure(layer.largest_reference):>9}"
                         + ("  departs" if layer.departs else ""))
    if result.hints:
        lines.append("")
        lines.append("Hints")
        for hint in result.hints:
            lines.append(f"  [{hint.get('severity', '?')}] {hint.get('message', '')}")
    lines.append(f"Time        {result.seconds.get('total', 0):.1f} s (reference {result.seconds.get('reference', 0):.1f} s, "
                 f"{result.mode} {result.seconds.get('reduced', 0):.1f} s)")
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def cmd_numerics(args: argparse.Namespace) -> int:
    from engine.cli import CliError, parse_shape_option
    from engine.cli_profile import CtrlC, Progress, _default_model
    from engine.numerics import NumericsError, NumericsSettings, run_numerics
    from engine.sweep import parse_size

    path = Path(args.model) if args.model else _default_model()
    try:
        settings = NumericsSettings(mode=args.mode, precision=args.precision, inputs=tuple(args.inputs or ["random"]),
                                    samples=args.samples, seed=args.seed, input_shapes=parse_shape_option(args.shape),
                                    size=parse_size(args.size) if args.size else None, tolerance=args.tolerance,
                                    threads=args.threads)
    except NumericsError as exc:
        raise CliError(str(exc))
    device = args.target not in (None, "cpu")
    package = path.suffix.lower() == ".mlpackage"
    if package:  # a converted package: its program on the MIL reference evaluator against its ONNX source
        from engine.numerics import MODE_PACKAGE
        if device:
            raise CliError("a .mlpackage is compared on the MIL reference evaluator here; for a device, give the "
                           "ONNX model with --target")
        settings = NumericsSettings(**{**settings.__dict__, "mode": MODE_PACKAGE})
    elif device:
        from engine.numerics import MODE_DEVICE
        settings = NumericsSettings(**{**settings.__dict__, "mode": MODE_DEVICE})
    elif args.compute_unit:
        raise CliError("--compute-unit applies to a device: add --target ws://HOST:PORT")
    progress = Progress(label=f"{settings.mode} ")
    with CtrlC(unit="layer") as ctrl_c:
        try:
            if package:
                from engine.numerics_package import run_package_numerics
                result = run_package_numerics(path, settings, progress=progress, cancel=ctrl_c.cancel)
            elif device:
                from engine.numerics_device import run_device_numerics
                result = run_device_numerics(path, args.target, settings, compute_unit=args.compute_unit,
                                             progress=progress, cancel=ctrl_c.cancel)
            else:
                result = run_numerics(path, settings, progress=progress, cancel=ctrl_c.cancel)
        except NumericsError as exc:
            raise CliError(f"{path}: {exc}")
        finally:
            progress.finish()
    written = []
    if args.json:
        result.save_json(args.json)
        written.append(args.json)
    if args.report:
        from engine.report.numerics_section import write_numerics_html
        write_numerics_html(result, args.report)
        written.append(args.report)
    if args.csv:
        from engine.report.numerics_section import write_numerics_csv
        write_numerics_csv(result, args.csv)
        written.append(args.csv)
    print(numerics_summary(result, top=args.top))
    for item in written:
        print(f"wrote {item}", file=sys.stderr)
    if not result.complete:
        if result.error in ("cancelled", "interrupted"):
            print(f"layerscope: interrupted after {len(result.layers)} layer(s); the figures above and the files "
                  "written hold those layers", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"layerscope: {path}: numerics incomplete: {result.error}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def add_numerics_command(sub) -> None:
    from engine.cli_profile import _positive_int
    from engine.numerics_settings import DEFAULT_TOLERANCE, MODES
    numerics = sub.add_parser(
        "numerics", help="compare every layer in fp16 (emulated) with the fp32 reference: find where fp16 breaks",
        description="Run the model in fp32 on ONNX Runtime and again in emulated fp16, and compare every layer's "
                    "outputs. Ctrl-C stops after the current layer and still writes what was compared.")
    numerics.add_argument("model", nargs="?", help="model file (.onnx), or a .mlpackage written by layerscope convert "
                                                   "(compared with its ONNX source); default: the bundled sample")
    numerics.add_argument("--precision", default="fp16", choices=["fp16"], help="reduced precision (fp16)")
    numerics.add_argument("--mode", default=MODES[0], choices=MODES,
                          help="fp16-storage (default, fast): fp32 arithmetic, every layer's outputs rounded to "
                               "fp16; fp16-compute (slow): the whole model in numpy float16 arithmetic")
    numerics.add_argument("--target", metavar="cpu|ws://HOST:PORT",
                          help="cpu (default): emulate fp16 here; an agent's address: compare the device's own "
                               "intermediate tensors (measured) with the fp32 reference")
    numerics.add_argument("--compute-unit", metavar="UNIT", help="with --target: the compute unit to load on "
                                                                   "(as the agent lists them, e.g. CPU)")
    numerics.add_argument("--inputs", action="append", metavar="random|normal|FILE.npz",
                          help="input values: random (uniform [0, 1), the default), normal (standard normal), or "
                               ".npz files with arrays named after the inputs (repeatable; an extra leading axis "
                               "holds several samples)")
    numerics.add_argument("--samples", type=int, default=1, help="how many generated inputs (default 1)")
    numerics.add_argument("--seed", type=int, default=0, help="seed of the first generated input (default 0)")
    numerics.add_argument("--shape", action="append", metavar="NAME=DIMS",
                          help="full shape of an input with free dimensions, e.g. input=1x3x224x224")
    numerics.add_argument("--size", metavar="HxW", help="input height x width for image inputs")
    numerics.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                          help=f"a layer departs above this error, max|fp16 - fp32| / max|fp32| "
                               f"(default {DEFAULT_TOLERANCE:g})")
    numerics.add_argument("--threads", type=_positive_int, default=0,
                          help="ONNX Runtime intra-op threads (default 0: one per core)")
    numerics.add_argument("--json", metavar="FILE", help="write the layerscope.numerics/1 JSON")
    numerics.add_argument("--report", metavar="FILE", help="write a self-contained HTML report")
    numerics.add_argument("--csv", metavar="FILE", help="write one CSV row per compared tensor")
    numerics.add_argument("--top", type=int, default=10, help="how many layers to list (default 10)")
    numerics.set_defaults(func=cmd_numerics)
