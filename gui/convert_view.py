"""A converted model beside its source: two graph views, selection linked through the layer map.

Left: the ONNX source.  Right: the .mlpackage as our Core ML importer opens it (one box per
MIL operation).  Selecting a node on one side outlines what it corresponds to on the other
(`engine.convert.node_links`: the MIL ops an ONNX node became; the ONNX node a MIL op came
from) and scrolls there; the other side's own selection is cleared, so the outline is the
only mark there.  Ops of no source node (fp16 input/output casts, image preprocessing) and
ONNX nodes removed at conversion link to nothing, and the status line says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

from engine.convert import node_links
from gui.graph_view import GraphScene, GraphView, build_in_slices


def _pane(title: str, view: GraphView) -> QWidget:
    pane = QWidget()
    layout = QVBoxLayout(pane)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    header = QLabel(title)
    header.setTextFormat(Qt.TextFormat.RichText)
    header.setStyleSheet("padding: 3px 6px; background: #eef1f6; border-bottom: 1px solid #c8ccd4;")
    layout.addWidget(header)
    layout.addWidget(view, 1)
    return pane


class ConvertView(QWidget):
    """A window: the source (left) and the converted package (right), selection synced both ways."""

    sourceSelected = Signal(str)  # ONNX node id selected here (the main window follows)
    scenesReady = Signal()  # both graphs are drawn

    def __init__(self, source, converted, layer_map: Mapping, parent=None):
        """source, converted: gui.app.LoadedModel of the ONNX file and of the .mlpackage."""
        super().__init__(parent, Qt.WindowType.Window)
        self.source, self.converted, self.layer_map = source, converted, layer_map
        self.links = node_links(layer_map, converted.analysis.graph)
        self._syncing = False
        options = layer_map.get("options", {})
        self.setWindowTitle(f"{Path(source.path).name} ⇄ {Path(converted.path).name} — LayerScope")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        mil_ops = sum(len(v) for v in layer_map.get("nodes", {}).values())
        summary = QLabel(
            f"{len(layer_map.get('nodes', {}))} ONNX nodes became {mil_ops} Core ML ops "
            f"({options.get('precision', '?')}, {options.get('target', '?')}, "
            f"optimize={options.get('optimize', '?')}); "
            f"{len(layer_map.get('unattributed', []))} ops belong to no source node, "
            f"{len(layer_map.get('removed', []))} nodes were removed, {len(layer_map.get('fused', {}))} fused. "
            "Select a node on either side: its counterpart is outlined on the other.")
        summary.setWordWrap(True)
        layout.addWidget(summary)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        self.source_view, self.converted_view = GraphView(), GraphView()
        # Built a slice per event-loop turn (source, then converted): two large graphs built in
        # one go would freeze the app for a moment.  Each side shows as soon as it is built.
        self.source_scene = GraphScene(source, self.source_view, build=False)
        self.converted_scene = GraphScene(converted, self.converted_view, build=False)
        self.ready = False  # both scenes built and shown
        self._cancel_build = build_in_slices(self.source_scene, self._source_built, failed=self._drawing_failed)
        source_nodes = source.analysis.totals.compute_nodes
        converted_nodes = converted.analysis.totals.compute_nodes
        splitter.addWidget(_pane(f"<b>ONNX source</b> · {Path(source.path).name} · {source_nodes} nodes",
                                 self.source_view))
        splitter.addWidget(_pane(f"<b>Core ML package</b> · {Path(converted.path).name} · {converted_nodes} ops",
                                 self.converted_view))
        splitter.setSizes([1, 1])
        layout.addWidget(splitter, 1)
        self.status = QLabel("Nothing selected.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.resize(1300, 820)

        self.source_view.nodeSelected.connect(self._source_selected)
        self.converted_view.nodeSelected.connect(self._converted_selected)

    def _source_built(self) -> None:
        self.source_view.set_graph_scene(self.source_scene)
        self.source_view.show_start()
        self._cancel_build = build_in_slices(self.converted_scene, self._converted_built,
                                             failed=self._drawing_failed)

    def _drawing_failed(self, exc: Exception) -> None:
        self.status.setText(f"Could not draw the graphs: {type(exc).__name__}: {exc}")

    def _converted_built(self) -> None:
        self.converted_view.set_graph_scene(self.converted_scene)
        self.converted_view.show_start()
        self.ready = True
        self.scenesReady.emit()

    def closeEvent(self, event) -> None:
        if not self.ready:
            self._cancel_build()
        super().closeEvent(event)

    # --- selection sync --------------------------------------------------------------------
    def select_source(self, node_id: str) -> None:
        """Select an ONNX node (as a click would): its Core ML ops are outlined on the right."""
        self.source_view.select_node(node_id)

    def select_converted(self, node_id: str) -> None:
        """Select a Core ML op (package node id): its ONNX node is outlined on the left."""
        self.converted_view.select_node(node_id)

    def _clear_selection(self, scene: GraphScene) -> None:
        scene.blockSignals(True)
        scene.clearSelection()
        scene.blockSignals(False)
        scene._mark_selection()

    def _describe_converted(self, node_ids) -> str:
        graph = self.converted.analysis.graph
        return ", ".join(f"{graph.node(n).name or n} ({graph.node(n).op_type})" for n in node_ids)

    def _source_selected(self, node_id: str) -> None:
        if self._syncing or not self.ready:
            return
        self._syncing = True
        try:
            self.source_scene.set_linked([])
            linked = self.links.converted_of(node_id) if node_id else ()
            self._clear_selection(self.converted_scene)
            self.converted_scene.set_linked(linked)
            if linked:
                self.converted_view.center_on_node(linked[0])
            if not node_id:
                self.status.setText("Nothing selected.")
            elif node_id not in self.source.analysis.nodes:
                self.status.setText(f"{node_id}: a graph input or output.")
            else:
                op_type = self.source.analysis.nodes[node_id].op_type
                if linked:
                    fused = self.layer_map.get("fused", {}).get(node_id)
                    how = f" (fused into {fused}'s op)" if fused else ""
                    self.status.setText(f"<b>{op_type} {node_id}</b> → {len(linked)} Core ML "
                                        f"op{'s' if len(linked) != 1 else ''}{how}: {self._describe_converted(linked)}")
                else:
                    reason = self.layer_map.get("removed_reasons", {}).get(node_id) or (
                        "folded into a constant" if node_id in self.layer_map.get("folded", ()) else "no Core ML op")
                    self.status.setText(f"<b>{op_type} {node_id}</b> → nothing: {reason}")
            self.sourceSelected.emit(node_id)
        finally:
            self._syncing = False

    def _converted_selected(self, node_id: str) -> None:
        if self._syncing or not self.ready:
            return
        self._syncing = True
        try:
            self.converted_scene.set_linked([])
            source_id: Optional[str] = self.links.source_of(node_id) if node_id else None
            self._clear_selection(self.source_scene)
            self.source_scene.set_linked([source_id] if source_id else [])
            if source_id and source_id in self.source_scene.node_index:
                self.source_view.center_on_node(source_id)
            if not node_id:
                self.status.setText("Nothing selected.")
            elif node_id not in self.converted.analysis.nodes:
                self.status.setText(f"{node_id}: a graph input or output.")
            elif source_id:
                op_type = self.source.analysis.nodes[source_id].op_type if source_id in self.source.analysis.nodes \
                    else ""
                self.status.setText(f"<b>{self._describe_converted([node_id])}</b> ← {op_type} {source_id}")
            else:
                self.status.setText(f"<b>{self._describe_converted([node_id])}</b> ← no source node (a cast or "
                                    "preprocessing op the conversion added)")
        finally:
            self._syncing = False
