"""The toolbar's Graph chooser: a model with several graphs (TFLite subgraphs: WHILE/IF bodies, signatures'
own subgraphs) shows one at a time; this picks which.  Hidden for a model with one graph.

Subgraph k's operators have ids "k/i" (importers.tflite.operator_node_id), so a profile's figures for
them paint on that subgraph, and the main graph's ids ("i") on the main one.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QComboBox, QLabel, QToolBar


def graph_title(model, index: int) -> str:
    graph = model.graphs[index]
    name = graph.name or ("main" if index == 0 else "")
    return f"{index}: {name} ({len(graph.nodes)} ops)" if name else f"{index} ({len(graph.nodes)} ops)"


def subgraph_index(model, graph) -> int:
    """The index of `graph` (a control-flow node's body) among the model's graphs; -1 if it is not one."""
    return next((i for i, g in enumerate(model.graphs) if g is graph), -1)


class SubgraphChooser(QComboBox):
    """Lives in the main window's toolbar; follows the model the window shows."""

    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.setToolTip("This model has several graphs (subgraphs): choose the one to show")
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        bar = window.findChild(QToolBar, "main-toolbar")
        # Beside the view actions, before Run: at the toolbar's end it would fall into the overflow menu.
        actions = bar.actions()
        before = actions[max(0, actions.index(window.run_action) - 1)]
        self._actions = (bar.insertWidget(before, QLabel(" Graph: ")), bar.insertWidget(before, self))
        self._show(False)
        window.modelLoaded.connect(self._follow)
        self.activated.connect(self.show_graph)

    def _show(self, visible: bool) -> None:
        for action in self._actions:
            action.setVisible(visible)

    def _follow(self, _path: str) -> None:
        loaded = self.window.loaded
        model = loaded.model
        self.blockSignals(True)
        self.clear()
        for index in range(len(model.graphs)):
            self.addItem(graph_title(model, index), index)
        self.setCurrentIndex(loaded.graph_index)
        self.blockSignals(False)
        self._show(len(model.graphs) > 1)

    def show_graph(self, index: int) -> None:
        """Show graph `index` of the open model (laid out in a worker, as an open; profiles stay)."""
        window = self.window
        loaded = window.loaded
        if loaded is None or index == loaded.graph_index or not 0 <= index < len(loaded.model.graphs):
            return
        from gui.app import load_model
        path, constants = loaded.path, window.show_constants_action.isChecked()
        window._start_task(lambda progress: load_model(path, constants, progress, graph_index=index),
                           f"Opening graph {graph_title(loaded.model, index)} of {Path(path).name}",
                           lambda result: window._on_loaded(result, same_model=True))
