"""What the targets that run a prepared model on this computer share (the ONNX Runtime and the LiteRT CPU
references): the prepared state, its analysis and inputs, re-preparing when the settings change, and the
feed of a plain run. Each target's own `_Prepared` holds at least `settings`, `key`, `model_path`,
`analysis` and `feed`."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from engine.targets.settings import ProfileSettings, TargetError

NOT_PREPARED = "no model prepared: call prepare(model_path, settings) first"


class PreparedModelTarget:
    """Base of a target that prepares one model at a time and runs it here."""

    def __init__(self):
        self._prepared = None

    def prepare(self, model_path, settings: Optional[ProfileSettings] = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_prepared(self):
        if self._prepared is None:
            raise TargetError(NOT_PREPARED)
        return self._prepared

    @property
    def analysis(self):
        """Static analysis of the prepared model (with the input shapes the target runs)."""
        return self._require_prepared().analysis

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The input values of a plain run (generated from the settings, or read from the .npz)."""
        return dict(self._require_prepared().feed)

    def _ensure(self, settings: ProfileSettings, model_path=None):
        """The prepared model for `settings`: prepared now if nothing is, again if the settings changed."""
        prepared = self._prepared
        if prepared is None:
            if model_path is None:
                raise TargetError(NOT_PREPARED)
            self.prepare(model_path, settings)
        elif prepared.key != settings.session_key():
            self.prepare(prepared.model_path, settings)
        return self._prepared

    def _plain_feed(self, inputs: Optional[Mapping[str, Any]]) -> tuple[Any, dict[str, np.ndarray]]:
        """The prepared model and the feed of one plain run: the generated inputs, with `inputs` in place
        of those it names."""
        prepared = self._ensure(self._prepared.settings if self._prepared else ProfileSettings())
        return prepared, merged_feed(prepared.feed, inputs)


def merged_feed(generated: Mapping[str, np.ndarray], inputs: Optional[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """`generated` with `inputs` in place of those it names (same dtype); an unknown name, or a shape the
    prepared model does not run, is refused."""
    feed = dict(generated)
    for name, value in (inputs or {}).items():
        if name not in feed:
            raise TargetError(f"the model has no input '{name}' (inputs: {', '.join(feed)})")
        array = np.asarray(value, dtype=feed[name].dtype)
        if array.shape != feed[name].shape:
            raise TargetError(f"input '{name}' has shape {'x'.join(map(str, array.shape))}; the prepared "
                              f"model runs {'x'.join(map(str, feed[name].shape))} (prepare again to change it)")
        feed[name] = array
    return feed
