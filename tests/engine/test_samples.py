"""The generated MobileUNet sample: valid ONNX, runs in ONNX Runtime, scales with
its parameters, and the shipped file is what the generator makes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.samples import (DEFAULT_SAMPLE_FILE, SAMPLES, default_sample_path, mobileunet,
                            write_sample)


def _run(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    # Run the graph as written, so a folding mistake cannot hide behind ORT's own fusions.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    (mask,) = session.run(["mask"], {"image": image})
    return mask


def _image(height: int, width: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype(np.float32)


def _conv_weight_elements(model: onnx.ModelProto) -> int:
    weights = {node.input[1] for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose")}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name in weights)


@pytest.fixture(scope="module")
def small_model() -> onnx.ModelProto:
    return mobileunet(alpha=0.5, size=96)


def test_checker_accepts_model(small_model):
    onnx.checker.check_model(small_model, full_check=True)
    assert small_model.opset_import[0].version == 17
    assert small_model.ir_version == 8
    assert small_model.producer_name == "layerscope-samples"
    assert "alpha=0.5" in small_model.doc_string
    props = {p.key: p.value for p in small_model.metadata_props}
    assert props["layerscope.sample"] == "mobileunet"
    assert props["alpha"] == "0.5"
    assert props["size"] == "96x96"


@pytest.mark.parametrize("size, num_classes", [(96, 1), (128, 2), ((128, 96), 1)])
def test_runs_in_onnxruntime_with_expected_output_shape(size, num_classes):
    height, width = (size, size) if isinstance(size, int) else size
    model = mobileunet(alpha=0.25, size=size, num_classes=num_classes)
    onnx.checker.check_model(model, full_check=True)
    mask = _run(model, _image(height, width))
    assert mask.shape == (1, num_classes, height, width)
    assert mask.dtype == np.float32
    assert np.all((mask >= 0) & (mask <= 1))  # Sigmoid


@pytest.mark.parametrize("size", [100, (128, 90), 16, 0])
def test_size_not_divisible_by_32_is_rejected(size):
    with pytest.raises(ValueError, match="multiple of 32"):
        mobileunet(size=size)


def test_graph_structure_and_names(small_model):
    graph = small_model.graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["mask"]
    names = [node.name for node in graph.node]
    assert len(names) == len(set(names))
    for expected in ("/encoder/block3/dw/Conv", "/encoder/block3/dw_bn/BatchNormalization",
                     "/decoder/up2/ConvTranspose", "/decoder/block2/pw/Conv",
                     "/head/conv/Conv", "/head/Sigmoid"):
        assert expected in names
    outputs = {o for node in graph.node for o in node.output}
    assert "/encoder/block3/dw/Conv_output_0" in outputs
    initializers = {t.name: t for t in graph.initializer}
    assert "encoder.block3.dw.weight" in initializers
    assert all(t.HasField("raw_data") for t in initializers.values())

    depthwise = next(n for n in graph.node if n.name == "/encoder/block3/dw/Conv")
    group = next(a.i for a in depthwise.attribute if a.name == "group")
    assert group == initializers["encoder.block3.dw.weight"].dims[0] > 1

    transposes = [n for n in graph.node if n.op_type == "ConvTranspose"]
    assert len(transposes) == 5
    assert all(n.name.startswith("/decoder/") for n in transposes)
    assert sum(n.op_type == "Concat" for n in graph.node) == 4
    assert all(n.op_type != "Concat" or n.name.startswith("/decoder/") for n in graph.node)


def test_unknown_sample_name_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match="mobileunet"):
        write_sample("resnet9000", tmp_path / "x.onnx")
    assert "mobileunet" in SAMPLES


def test_alpha_scales_channel_widths():
    full = _conv_weight_elements(mobileunet(alpha=1.0, size=64))
    half = _conv_weight_elements(mobileunet(alpha=0.5, size=64))
    assert 3.0 <= full / half <= 4.5


def test_folded_batchnorm_computes_the_same_function():
    unfolded = mobileunet(alpha=0.25, size=64, seed=3)
    folded = mobileunet(alpha=0.25, size=64, seed=3, fold_batchnorm=True)
    onnx.checker.check_model(folded, full_check=True)
    assert any(n.op_type == "BatchNormalization" for n in unfolded.graph.node)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    image = _image(64, 64)
    expected = _run(unfolded, image)
    # The comparison means something only if the output is not saturated.
    assert expected.std() > 0.01
    np.testing.assert_allclose(_run(folded, image), expected, atol=1e-4, rtol=0)


def test_seed_changes_weights_but_not_structure():
    a = mobileunet(alpha=0.25, size=64, seed=0)
    b = mobileunet(alpha=0.25, size=64, seed=1)
    assert [n.name for n in a.graph.node] == [n.name for n in b.graph.node]
    assert a.graph.initializer[-1].raw_data != b.graph.initializer[-1].raw_data


def test_shipped_sample_is_what_the_generator_makes(tmp_path):
    shipped_path = default_sample_path()
    assert shipped_path.name == DEFAULT_SAMPLE_FILE
    assert shipped_path.is_file(), "regenerate it: see resources/samples/README.md"
    assert shipped_path.stat().st_size < 5 * 1024 * 1024
    shipped = onnx.load(str(shipped_path))
    regenerated = onnx.load(str(write_sample("mobileunet", tmp_path / DEFAULT_SAMPLE_FILE,
                                             alpha=0.5, size=160)))
    assert len(shipped.graph.node) == len(regenerated.graph.node)
    assert [n.name for n in shipped.graph.node] == [n.name for n in regenerated.graph.node]
    assert ({t.name: tuple(t.dims) for t in shipped.graph.initializer}
            == {t.name: tuple(t.dims) for t in regenerated.graph.initializer})
