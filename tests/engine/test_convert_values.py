"""The converter's value checks catch wrong conversions (issue 11, part 1).

Each test applies one mutation to a copy of one converter function (the source text of
the function with one line changed, compiled in the converter's module and swapped in for
the test only) and converts a small model whose numbers make that mutation visible: the
conversion must fail a value check, name the first source node whose result departs, and
make `layerscope convert` exit non-zero.  Unmutated, the same model passes every check.
"""
from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.convert import ConversionError, convert, ops

EXIT_INCOMPLETE = 3


def mutate(monkeypatch, function, old: str, new: str):
    """Swap `function` (in engine.convert.ops, and in OPS for a registered op) for a copy
    whose source has `old` replaced by `new` (which must occur exactly once)."""
    source = textwrap.dedent(inspect.getsource(function))
    assert source.count(old) == 1, f"the mutation's anchor is not unique in {function.__name__}: {old!r}"
    source = source.replace(old, new)
    # drop the @op(...) registration line: the copy is swapped in below, for this test only
    lines = [line for line in source.splitlines() if not line.startswith("@op(")]
    namespace: dict = {}
    exec(compile("\n".join(lines), f"<mutated {function.__name__}>", "exec"), vars(ops), namespace)
    mutated = namespace[function.__name__]
    monkeypatch.setattr(ops, function.__name__, mutated)
    for op_type, definition in list(ops.OPS.items()):
        if definition.build is function:
            monkeypatch.setitem(ops.OPS, op_type, ops.OpDef(mutated, definition.check))
    return mutated


def _model(path: Path) -> Path:
    """Conv (asymmetric SAME_UPPER pads) -> BatchNormalization (epsilon 1e-2, small variances)
    -> Relu -> ConvTranspose (stride 2, output_padding 1): every mutation below shows."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "conv_w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "conv_b"),
        numpy_helper.from_array((rng.random(8) + 0.5).astype(np.float32), "bn_scale"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "bn_bias"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "bn_mean"),
        numpy_helper.from_array((rng.random(8) * 0.02 + 0.001).astype(np.float32), "bn_var"),
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3, "up_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "up_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], name="stem/conv", strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"],
                         name="stem/bn", epsilon=1e-2),
        helper.make_node("Relu", ["b"], ["r"], name="stem/relu"),
        helper.make_node("ConvTranspose", ["r", "up_w", "up_b"], ["mask"], name="head/up", strides=[2, 2],
                         pads=[1, 1, 1, 1], output_padding=[1, 1]),
    ]
    graph = helper.make_graph(nodes, "mutations", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                 [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


MUTATIONS = {
    # id: (function, old text, new text, the first node that must depart, the checks that must fail)
    "negated_conv_weights": (ops.conv, "weight = ctx.x(1)", "weight = -ctx.x(1)",
                             "stem/conv", {"weights", "values"}),
    "swapped_padding_order": (ops._interleave, "zip(begins, ends)", "zip(ends, begins)", "stem/conv", {"values"}),
    # output_padding only adds positions at the end of a ConvTranspose's result, so dropping it
    # always changes the output's size: the shapes check refuses the conversion, naming the node.
    "dropped_output_padding": (ops.conv_transpose,
                               "output_padding = [int(p) for p in (ctx.attr(\"output_padding\") or [0] * spatial)]",
                               "output_padding = [0] * spatial", "head/up", {"shapes"}),
    # the node's epsilon attribute ignored: MIL's default (1e-5) is used instead
    "dropped_batchnorm_epsilon": (ops.batch_normalization, 'epsilon = ctx.float(ctx.attr("epsilon", 1e-5))',
                                  "epsilon = ctx.float(1e-5)", "stem/bn", {"values"}),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_unmutated_converter_passes_every_value_check(precision, tmp_path):
    result = convert(_model(tmp_path / "m.onnx"), tmp_path / "m.mlpackage", precision=precision)
    assert result.verified, result.outcomes()
    assert result.verification["weights"]["status"] == "passed"
    values = result.verification["values"]
    assert values["status"] == "passed"
    assert values["first_departure"] is None
    assert [layer["node"] for layer in values["layers"]] == ["stem/conv", "stem/bn", "stem/relu", "head/up"]
    assert set(values["outputs"]) == {"mask"}
    assert result.verification["coreml"]["status"] in (("passed",) if sys.platform == "darwin" else ("not run",))
    assert "MIL reference evaluator" in result.verdict()


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_each_mutation_fails_verification_naming_the_first_departing_layer(name, precision, monkeypatch, tmp_path):
    function, old, new, first_node, failing = MUTATIONS[name]
    mutate(monkeypatch, function, old, new)
    if failing == {"shapes"}:
        with pytest.raises(ConversionError) as raised:
            convert(_model(tmp_path / "m.onnx"), tmp_path / "m.mlpackage", precision=precision)
        assert "shapes differ from ONNX's" in str(raised.value)
        assert [blocker.node_id for blocker in raised.value.blockers] == [first_node]
        assert not (tmp_path / "m.mlpackage").exists()
        return
    result = convert(_model(tmp_path / "m.onnx"), tmp_path / "m.mlpackage", precision=precision)
    assert not result.verified
    assert failing <= set(result.failed_checks), result.outcomes()
    assert set(result.failed_checks) <= {"weights", "values"}, result.outcomes()
    values = result.verification["values"]
    assert values["first_departure"]["node"] == first_node
    assert f"first departing layer: {first_node}" in values["detail"]
    if "weights" in failing:
        assert result.verification["weights"]["first_departure"] == first_node


def test_cli_exits_non_zero_and_names_the_layer(monkeypatch, tmp_path):
    """The CLI in a subprocess, with the mutation applied by a small wrapper script."""
    model = _model(tmp_path / "m.onnx")
    script = tmp_path / "run_mutated.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import pytest
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_convert_values import MUTATIONS, mutate
        from engine.cli import main
        with pytest.MonkeyPatch.context() as patch:
            function, old, new, _, _ = MUTATIONS["dropped_batchnorm_epsilon"]
            mutate(patch, function, old, new)
            sys.exit(main(["convert", {str(model)!r}, "-o", {str(tmp_path / "m.mlpackage")!r}, "-q"]))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_INCOMPLETE, done.stderr
    assert "check 'values' failed: first departing layer: stem/bn (BatchNormalization)" in done.stderr
    assert "values: weights equal" in done.stdout and "first at stem/bn" in done.stdout
    assert "output mask: max abs error" in done.stdout
    assert "largest per-layer errors: " in done.stdout
