"""Where the bundled sample model lives; apart from engine.samples so that finding it imports no onnx."""
from __future__ import annotations

from pathlib import Path

DEFAULT_SAMPLE_FILE = "mobileunet_a050_160.onnx"
# Parameters of the shipped DEFAULT_SAMPLE_FILE (see resources/samples/README.md).
DEFAULT_SAMPLE_PARAMS = {"alpha": 0.5, "size": 160}


def default_sample_path() -> Path:
    """Path of the sample model the app opens by default (resources/samples/...).

    Located beside this package rather than through importlib.resources("resources"):
    "resources" is a generic top-level name another installed distribution could
    own, while engine/ and resources/ always sit side by side (checkout or wheel).
    """
    return Path(__file__).resolve().parents[1] / "resources" / "samples" / DEFAULT_SAMPLE_FILE
