"""Per-layer numerics (engine.numerics) on models whose fp16 behaviour is known by construction."""
from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

import numerics_models

from engine.numerics import (FP16_MAX, MODES, NumericsError, NumericsResult, NumericsSettings, compare_tensor,
                             run_numerics)
from engine.samples import default_sample_path, write_sample


@pytest.fixture
def overflow_model(tmp_path):
    return numerics_models.overflow_model(tmp_path)


@pytest.fixture
def softmax_model(tmp_path):
    return numerics_models.softmax_model(tmp_path)


@pytest.fixture
def exact_model(tmp_path):
    return numerics_models.exact_model(tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_overflow_layer_is_named_first(overflow_model, mode):
    result = run_numerics(overflow_model, NumericsSettings(mode=mode))
    assert result.complete and result.samples_compared == 1
    assert result.first_departing == "square"
    assert result.first_overflow == "square"
    square = result.layer("square")
    assert square.overflows and square.inf_count > 0 and math.isinf(square.error)
    assert square.overflow_share > 0 and square.largest_reference > FP16_MAX
    # The layer before is only rounded: under half an fp16 unit of its range.
    assert result.layer("scale_up").error <= 2 ** -11
    assert not result.layer("scale_up").departs
    assert "square" in result.overflowing_tensors() or "squared" in result.overflowing_tensors()


@pytest.mark.parametrize("mode", MODES)
def test_softmax_over_large_logits_loses_precision_in_fp16_only(softmax_model, tmp_path, mode):
    x = np.random.default_rng(3).random((1, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = run_numerics(softmax_model, NumericsSettings(mode=mode, inputs=(str(tmp_path / "x.npz"),)))
    assert result.layer("logits").error < 1e-3  # the logits themselves are fine in fp16
    softmax = result.layer("softmax")
    assert softmax.departs and softmax.error > 0.1 and softmax.inf_count == 0
    assert result.first_departing == "softmax" and result.first_overflow is None
    # ... while the fp32 reference agrees with float64 softmax: only fp16 loses it.
    logits = x.astype(np.float64) * 4 + 3000
    exact = np.exp(logits - logits.max())
    exact /= exact.sum()
    reference_error = compare_tensor("p", exact, exact.astype(np.float32))
    assert reference_error.error < 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_model_exact_in_fp16_has_zero_error(exact_model, tmp_path, mode):
    inputs = numerics_models.integer_inputs(tmp_path)
    result = run_numerics(exact_model, NumericsSettings(mode=mode, inputs=(str(inputs),)))
    assert set(result.layers) == {"conv", "relu", "add"}
    for layer in result.layers.values():
        assert layer.error == 0 and layer.max_abs_error == 0 and layer.max_rel_error == 0
        assert layer.cosine == 1.0 and math.isinf(layer.snr_db) and layer.snr_db > 0
        assert not layer.departs and layer.histogram[0] == layer.tensors[0].elements
    assert result.first_departing is None and result.first_overflow is None


def test_mobileunet_sample_errors_small_and_finite():
    result = run_numerics(default_sample_path(), NumericsSettings(mode="fp16-storage"))
    assert result.complete and len(result.layers) > 50
    errors = [layer.error for layer in result.layers.values()]
    assert all(math.isfinite(e) for e in errors)
    assert 0 < max(errors) < 1e-2
    assert min(layer.snr_db for layer in result.layers.values()) > 40
    assert result.first_departing is None and result.first_overflow is None


def test_mobileunet_in_fp16_compute(tmp_path):
    path = write_sample("mobileunet", tmp_path / "small.onnx", alpha=0.25, size=64)
    storage = run_numerics(path, NumericsSettings(mode="fp16-storage"))
    compute = run_numerics(path, NumericsSettings(mode="fp16-compute"))
    assert compute.complete and set(compute.layers) == set(storage.layers)
    assert all(math.isfinite(layer.error) and layer.error < 5e-2 for layer in compute.layers.values())
    # fp16 arithmetic adds accumulation error to storage rounding: the head is further off.
    head = next(reversed(compute.layers))
    assert compute.layers[head].error > 0 and storage.layers[head].error > 0
    assert not compute.warnings, compute.warnings


def test_several_inputs_aggregate_as_worst_and_pooled(overflow_model, softmax_model, tmp_path):
    rng = np.random.default_rng(11)
    a, b = (rng.random((1, 64)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "a.npz", x=a)
    np.savez(tmp_path / "b.npz", x=b)
    np.savez(tmp_path / "ab.npz", x=np.stack([a, b]))
    one = [run_numerics(softmax_model, NumericsSettings(inputs=(str(tmp_path / n),))) for n in ("a.npz", "b.npz")]
    files = run_numerics(softmax_model, NumericsSettings(inputs=(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))))
    stacked = run_numerics(softmax_model, NumericsSettings(inputs=(str(tmp_path / "ab.npz"),)))
    for both in (files, stacked):
        assert both.samples_compared == 2
        softmax = both.layer("softmax").tensors[0]
        assert softmax.samples == 2 and softmax.elements == 128
        assert softmax.max_abs_error == max(r.layer("softmax").max_abs_error for r in one)
        assert sum(softmax.histogram) == 128
    assert files.to_json_dict()["layers"] == stacked.to_json_dict()["layers"]
    generated = run_numerics(softmax_model, NumericsSettings(samples=3, seed=5))
    assert generated.samples_compared == 3 and "seeds 5..7" in generated.inputs


def test_segments_stream_with_the_same_figures():
    whole = run_numerics(default_sample_path(), NumericsSettings())
    streamed = run_numerics(default_sample_path(), NumericsSettings(segment_bytes=1))
    assert streamed.settings["segments"] == len(whole.layers) + len(whole.not_compared)
    assert whole.settings["segments"] == 1
    assert [l.to_json_dict() for l in whole.layers.values()] == [l.to_json_dict() for l in streamed.layers.values()]


def test_every_figure_is_emulated_and_names_the_emulation(overflow_model, tmp_path):
    for mode in MODES:
        result = run_numerics(overflow_model, NumericsSettings(mode=mode))
        data = result.to_json_dict()
        assert data["kind"] == "emulated" and data["emulation"].startswith(mode)
        assert ("Cast" in data["emulation"]) == (mode == "fp16-storage")
        assert ("reference evaluator" in data["emulation"]) == (mode == "fp16-compute")
        assert all(layer["kind"] == "emulated" for layer in data["layers"])
        assert all(t["kind"] == "emulated" for layer in data["layers"] for t in layer["tensors"])
        # Non-finite figures survive a JSON round trip.
        path = tmp_path / f"{mode}.json"
        result.save_json(path)
        text = path.read_text()

        def refuse(constant):
            raise AssertionError(f"{constant} is not JSON")

        json.loads(text, parse_constant=refuse)
        again = NumericsResult.load_json(path)
        assert math.isinf(again.layer("square").error) and again.first_departing == "square"
        assert again.to_json_dict() == data


def test_cancel_keeps_the_layers_compared(tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append((done, total, message))
        if len(seen) == 5:
            cancel.set()

    result = run_numerics(default_sample_path(), NumericsSettings(mode="fp16-compute"), progress, cancel)
    assert not result.complete and result.error == "cancelled"
    assert 5 <= len(result.layers) < 20
    assert seen[0][1] == 1000 and all(d <= t for d, t, _ in seen)


def test_bad_inputs_say_what_is_wrong(overflow_model, tmp_path):
    np.savez(tmp_path / "wrong.npz", y=np.zeros((1, 64), np.float32), z=np.zeros(3))
    with pytest.raises(NumericsError, match="no array for input.*x"):
        run_numerics(overflow_model, NumericsSettings(inputs=(str(tmp_path / "wrong.npz"),)))
    with pytest.raises(NumericsError, match="no such file"):
        run_numerics(overflow_model, NumericsSettings(inputs=(str(tmp_path / "missing.npz"),)))
    np.savez(tmp_path / "shape.npz", x=np.zeros((1, 32), np.float32))
    from engine.targets import TargetError
    with pytest.raises(TargetError, match="dimension 1 is 64"):
        run_numerics(overflow_model, NumericsSettings(inputs=(str(tmp_path / "shape.npz"),)))
    with pytest.raises(NumericsError, match="mode must be one of"):
        NumericsSettings(mode="fp8")


def test_the_bottleneck_report_gains_a_numerics_section(overflow_model, tmp_path):
    from engine.report import write_html
    from engine.targets import ProfileSettings
    from engine.targets.cpu import CpuTarget
    result = run_numerics(overflow_model, NumericsSettings())
    with CpuTarget() as target:
        target.prepare(overflow_model, ProfileSettings(runs=2, warmup=0))
        profile = target.profile()
        analysis = target.analysis
    html = write_html(profile, analysis, tmp_path / "r.html", numerics=result).read_text()
    assert "Numerics: fp16 against the fp32 reference" in html
    assert "fp16_overflow" in html and "&#x27;square&#x27; (Mul)" in html and "op_selector" in html
    assert 'class="kind emulated"' in html
    plain = write_html(profile, analysis, tmp_path / "p.html").read_text()
    assert "Numerics:" not in plain
