"""Is the ONNX importer's IR the same as another checkout's?  A digest per model, compared.

    python3 benchmarks/onnx_ir_digest.py --before CHECKOUT [MODEL.onnx ...]

Models: every .onnx shipped under onnx/backend/test/data, a few built here for what those lack
(If/Loop/Scan bodies, nested; Constant nodes; a free batch dimension; stale stored value_info;
an embedded large weight; external data; an op ONNX does not define; sequence types; repeated
node names; files cut short, not protobuf, or without a graph, whose errors must match), and the
MODEL files given.  Each is opened twice per checkout, in a fresh process
per checkout and way: in-process shape inference (the CLI's way), and handed to the app's
helper process (gui.responsive.start_helper_process, every graph offloaded).  The digest is a
SHA-256 over the repr of the whole Model (every node's id, op, domain, inputs, outputs,
attributes, namespace and subgraphs; every value's type, shape, initializer and small data; the
graphs' inputs/outputs; metadata and warnings), so any difference shows.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WAYS = ("in-process", "helper")


def model_digest(model) -> str:
    digest = hashlib.sha256()
    digest.update(repr((model.format, model.producer, model.metadata, model.path, model.warnings)).encode())
    for graph in model.graphs:
        digest.update(repr((graph.name, graph.inputs, graph.outputs, graph.channels_last)).encode())
        for node in graph.nodes:  # node by node: a 100,000-node graph's repr would be one huge string
            digest.update(repr(node).encode())
        for value in graph.values.values():
            digest.update(repr(value).encode())
    return digest.hexdigest()


def child(way: str, paths: list[str]) -> None:
    """Print {path: digest or error} of every model opened the given way."""
    import importers.onnx as onnx_importer
    from importers import open_model

    if way == "helper":
        from gui.responsive import helper_ready, start_helper_process, stop_helper_process

        start_helper_process()
        if not helper_ready(timeout=120):
            raise SystemExit("the helper process did not start")
        onnx_importer.INFERENCE_OFFLOAD_NODES = 0
    results = {}
    for path in paths:
        try:
            results[path] = model_digest(open_model(Path(path)))
        except Exception as exc:  # an error is a result too: both checkouts must give the same one
            results[path] = f"error {type(exc).__name__}: {exc}"
    if way == "helper":
        stop_helper_process()
    print("RESULT " + json.dumps(results))


def run_child(checkout: str, way: str, paths: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", way, *paths],
                          env=env, cwd=checkout, capture_output=True, text=True, timeout=3600)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"the {way} child on {checkout} failed:\n{done.stderr[-2000:]}")


def build_feature_models(folder: Path) -> list[Path]:
    """Small models with what the onnx package's test data lacks."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    opset = [helper.make_opsetid("", 17)]
    paths = []

    def save(name, graph, **kwargs):
        path = folder / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=opset), path, **kwargs)
        paths.append(path)

    # If with a Loop inside one branch and a Scan beside it; Constants of every kind.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    loop_body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"]),
         helper.make_node("Constant", [], ["one"], value_float=1.0)], "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["trip"], value=numpy_helper.from_array(np.array(3, np.int64))),
         helper.make_node("Loop", ["trip", "cond", "x"], ["looped"], name="/then/loop", body=loop_body)],
        "then", [], [helper.make_tensor_value_info("looped", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["negated"], name="/else/neg")], "else", [],
                                   [helper.make_tensor_value_info("negated", TensorProto.FLOAT, None)])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "row"], ["sum_out"]), helper.make_node("Identity", ["sum_out"], ["seen"])],
        "scan_body", [helper.make_tensor_value_info("sum_in", TensorProto.FLOAT, [3]),
                      helper.make_tensor_value_info("row", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("sum_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("seen", TensorProto.FLOAT, [3])])
    nodes = [
        helper.make_node("Constant", [], ["shape"], name="/c/shape",
                         value=numpy_helper.from_array(np.array([3, -1], np.int64))),
        helper.make_node("Constant", [], ["scale"], name="/c/scale", value_float=0.5),
        helper.make_node("Constant", [], ["axes"], name="/c/axes", value_ints=[0]),
        helper.make_node("Constant", [], ["zero"], name="/c/zero", value_floats=[0.0, 0.0, 0.0]),
        helper.make_node("If", ["cond"], ["branch"], name="/branch", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Reshape", ["branch", "shape"], ["reshaped"], name="/m/reshape"),
        helper.make_node("Mul", ["reshaped", "scale"], ["scaled"], name="/m/mul"),
        helper.make_node("Scan", ["zero", "x"], ["total", "rows"], name="/m/scan", num_scan_inputs=1,
                         body=scan_body),
        helper.make_node("Mul", ["scaled", "scale"], ["twice"], name="/m/mul"),  # a repeated name
        helper.make_node("SequenceConstruct", ["x", "x"], ["seq"], name="/m/seq"),
    ]
    outputs = ([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("twice", "total", "rows")] +
               [helper.make_tensor_value_info("seq", TensorProto.UNDEFINED, None)])
    save("control_flow", helper.make_graph(nodes, "control_flow", [cond, x], outputs))
    # The same with an op ONNX does not define: inference fails, stored shapes are shown.
    save("control_flow_custom_op", helper.make_graph(
        nodes + [helper.make_node("MyOp", ["twice"], ["custom"], name="/custom/op", domain="com.example")],
        "control_flow_custom_op", [cond, x], outputs + [helper.make_tensor_value_info("custom", TensorProto.FLOAT, None)]))

    # Stored value_info that inference must overwrite (stale shapes), a big embedded weight.
    weights = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    stale = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="/mm"), helper.make_node("Relu", ["m"], ["y"], name="/r")],
        "stale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 7])], [weights],
        value_info=[helper.make_tensor_value_info("m", TensorProto.FLOAT, [5, 5])])
    save("stale_value_info", stale)
    save("external_data", stale, save_as_external_data=True, all_tensors_to_one_file=True,
         location="external_data.bin", size_threshold=0)

    # Files that must fail (or open) the same way: cut short, not protobuf, an empty graph, no graph.
    whole = paths[0].read_bytes()
    for name, content in (("truncated", whole[:len(whole) * 2 // 3]),
                          ("random_bytes", random.Random(0).randbytes(5000)),
                          ("empty_graph", b"\x08\x07\x3a\x00"), ("no_graph", b"\x08\x07\x12\x04test")):
        path = folder / f"{name}.onnx"
        path.write_bytes(content)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="more .onnx files to compare")
    parser.add_argument("--before", metavar="CHECKOUT", required=False, help="the checkout to compare with")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.models)
        return 0
    if not args.before:
        parser.error("--before CHECKOUT is required")
    import onnx

    here = str(Path(__file__).resolve().parents[1])
    test_data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    paths = sorted(str(p) for p in test_data.rglob("*.onnx"))
    paths += [str(p) for p in build_feature_models(Path(tempfile.mkdtemp(prefix="layerscope-digest-")))]
    paths += [str(Path(p).resolve()) for p in args.models]
    print(f"ONNX IR digests, this checkout vs {args.before}: {len(paths)} models, each opened both ways")
    print(f"{'way':12} {'models':>7} {'equal':>7} {'differ':>7} {'errors (same)':>14}")
    differing = []
    for way in WAYS:
        this, before = run_child(here, way, paths), run_child(str(Path(args.before).resolve()), way, paths)
        differ = [p for p in paths if this[p] != before[p]]
        errors = sum(1 for p in paths if this[p].startswith("error") and this[p] == before[p])
        print(f"{way:12} {len(paths):7d} {len(paths) - len(differ):7d} {len(differ):7d} {errors:14d}")
        differing += [(way, p, before[p], this[p]) for p in differ]
    for way, path, old, new in differing:
        print(f"DIFFERS ({way}): {path}\n  before {old[:200]}\n  this   {new[:200]}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
