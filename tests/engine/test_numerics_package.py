"""Numerics of a converted fp16 Core ML package: its MIL program (reference evaluator) against the ONNX source."""
from __future__ import annotations

import subprocess
import sys

import pytest

import numerics_models
from engine.numerics import NumericsError, NumericsSettings
from engine.numerics_package import run_package_numerics

pytest.importorskip("coremltools")


def test_the_fp16_package_overflows_where_the_source_says(tmp_path):
    from engine.convert import convert
    source = numerics_models.normalisation_model(tmp_path)
    package = tmp_path / "normalisation.mlpackage"
    convert(source, package, precision="fp16")
    result = run_package_numerics(package, NumericsSettings(mode="package", samples=2))
    assert result.complete and result.samples_compared == 2 and result.kind == "emulated"
    assert "MIL reference evaluator" in result.emulation and "fp16" in result.emulation
    assert result.first_overflow == "square" and result.first_departing == "square"
    assert result.layer("conv").error < 1e-3
    assert all(layer.kind == "emulated" for layer in result.layers.values())
    # The CLI takes the package itself.
    done = subprocess.run([sys.executable, "-m", "engine", "numerics", str(package)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Compared    emulated: package: normalisation.mlpackage (fp16" in done.stdout
    assert "First departing layer  square (Mul)" in done.stdout
    # Without its layer map there is nothing to tie MIL values to ONNX tensors: said, not guessed.
    (tmp_path / "normalisation.layermap.json").unlink()
    with pytest.raises(NumericsError, match="no layer map beside it"):
        run_package_numerics(package)
