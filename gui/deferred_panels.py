"""The profile charts' dock content, created when a profile needs it instead of at start-up.

gui.panels draws with pyqtgraph, whose import turns every PySide6 enum into a Python enum
(about 0.4 s here).  No chart is visible before the first profile, so the window starts with
this placeholder and the real `ProfilePanels` is built on first use: a profile, sweeps, or
any attribute of the panels (tests and the app reach `window.panels.<x>` freely).  After the
first model is drawn, `warm_up` imports pyqtgraph in a background thread, so that the first
profile does not pay the import on the UI thread either.
"""
from __future__ import annotations

import threading
from typing import Optional

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

PLACEHOLDER_TEXT = "No profile yet: Profile > Run… measures every layer."


class DeferredProfilePanels(QWidget):
    """Stands in for gui.panels.ProfilePanels until it is needed, then holds it and forwards to it."""

    nodeClicked = Signal(str)
    nodesClicked = Signal(list)  # a hint's layers

    def __init__(self, parent=None):
        super().__init__(parent)
        self._real = None
        self._building = None  # (ProfilePanels being built, its remaining build steps), see build_steps
        self._warm_thread: Optional[threading.Thread] = None
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._placeholder = QLabel(PLACEHOLDER_TEXT)
        self._layout.addWidget(self._placeholder)

    @property
    def created(self) -> bool:
        return self._real is not None

    def warm_up(self) -> None:
        """Import the chart library in a background thread (idempotent; the UI thread stays free)."""
        if self._real is not None or self._warm_thread is not None:
            return

        def work():
            try:
                import gui.panels  # noqa: F401 (loaded for later; a failure shows when it is used)
            except Exception:
                pass

        self._warm_thread = threading.Thread(target=work, name="layerscope-warm-charts", daemon=True)
        self._warm_thread.start()

    def real(self):
        """The ProfilePanels, created now if it was not yet (a build begun by `build_steps` is finished)."""
        if self._real is None:
            for _ in self.build_steps():
                pass
        return self._real

    def build_steps(self):
        """Create the ProfilePanels a chart per step (a generator; nothing when created already):
        the window runs the steps in separate event-loop passes when a large profile arrives, so
        the five charts (70-90 ms together) do not freeze it at once.  The panels are shown, and
        answer for this stand-in, once whole; `real()` meanwhile finishes the build."""
        if self._real is not None:
            return
        if self._building is None:
            from gui.panels import ProfilePanels

            panels = ProfilePanels(self, build_now=False)
            panels.hide()  # (a child made after its parent is shown stays hidden until laid out)
            self._building = (panels, panels.build_steps())
        panels, steps = self._building
        for _ in steps:
            yield
            if self._real is not None:  # finished by real() meanwhile
                return
        self._building = None
        panels.nodeClicked.connect(self.nodeClicked)
        panels.nodesClicked.connect(self.nodesClicked)
        self._layout.removeWidget(self._placeholder)
        self._placeholder.deleteLater()
        self._layout.addWidget(panels)
        panels.show()
        self._real = panels
        yield  # laid out and painted empty in a pass of their own (the fill comes next)

    # The calls the window makes with nothing to show do not create the charts.
    def set_profile(self, profile, label: str = "") -> None:
        if profile is None and self._real is None:
            return
        self.real().set_profile(profile, label)

    def set_sweeps(self, sweeps) -> None:
        if not sweeps and self._real is None:
            return
        self.real().set_sweeps(sweeps)

    def highlight_node(self, node_id: Optional[str]) -> None:
        # Without charts there is no bar to mark; the window highlights again with each profile.
        if self._real is not None:
            self._real.highlight_node(node_id)

    def __getattr__(self, name: str):
        # Only reached for names this widget lacks: the charts' own attributes and methods.
        if name.startswith("__") or name in ("_real", "_building", "_warm_thread", "_layout", "_placeholder"):
            raise AttributeError(name)
        return getattr(self.real(), name)
