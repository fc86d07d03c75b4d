"""Inspector panel: everything known about the selected node.

Static figures come from `engine.analysis` and are labelled "estimated": they
are computed from shapes, not measured.  Once profiled, the selected profile's
figures (engine.profile.NodeTiming) are shown in their own section, each with
its kind: measured (own kernel) or attributed (share of a fused kernel).
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QFont, QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QHeaderView, QStyledItemDelegate, QTreeWidget,
                               QTreeWidgetItem)

from engine.inspect import human_bytes, human_count, quantization_text
from engine.layout import INPUT_PREFIX, OUTPUT_PREFIX
from gui.graph_groups import group_totals
from gui.graph_view import format_ms, node_transfers

ESTIMATED = "estimated"


def _attribute_text(value: object, limit: int = 80) -> str:
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _WrappingDelegate(QStyledItemDelegate):
    """Rows as tall as their text wrapped to its column's width (QTreeView sizes rows by one line)."""

    def sizeHint(self, option, index):
        base = super().sizeHint(option, index)
        text = str(index.data() or "")
        width = self.parent().columnWidth(index.column()) - 8
        if not text or width <= 20:
            return base
        wrapped = option.fontMetrics.boundingRect(QRect(0, 0, width, 10_000),
                                                  int(Qt.TextFlag.TextWordWrap), text)
        return QSize(base.width(), max(base.height(), wrapped.height() + 4))


class Inspector(QTreeWidget):
    """A three-column tree: property, value, kind (estimated / measured / attributed)."""

    # A node listed in the inspector (a group's slowest or heaviest nodes) was activated
    # (double-click or Enter): the window selects it, opening the groups that hide it.
    nodeActivated = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setColumnCount(3)
        self.setHeaderLabels(["Property", "Value", "Kind"])
        self.setRootIsDecorated(True)
        self.setAlternatingRowColors(True)
        # Values wrap at spaces ("float32 1x64x80x80  (1.6 MiB) · from conv" on two lines, not cut in
        # the middle of the shape); a single long word (a tensor name) is elided in the middle, with
        # the full text in its tooltip and on Ctrl+C.  A few dozen rows: varying heights cost nothing.
        self.setUniformRowHeights(False)
        self.setWordWrap(True)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setItemDelegate(_WrappingDelegate(self))
        self.header().sectionResized.connect(lambda *_: self.doItemsLayout())  # rows wrap to the new width
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        copy = QShortcut(QKeySequence.StandardKey.Copy, self, self.copy_selection)
        copy.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.header().setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        self.header().setStretchLastSection(False)
        self.setColumnWidth(0, 170)
        self.setColumnWidth(2, 72)
        self.node_id: Optional[str] = None
        self._numbered = None  # the analysis _numbers was made for
        self._numbers: dict[str, int] = {}
        self.itemActivated.connect(self._activated)
        self.show_nothing()

    def _activated(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        node_id = item.data(0, Qt.ItemDataRole.UserRole)
        if isinstance(node_id, str) and node_id:
            self.nodeActivated.emit(node_id)

    def node_rows(self) -> dict[str, QTreeWidgetItem]:
        """The rows that name a node and select it when activated, by node id."""
        found = {}
        iterator = [self.topLevelItem(i) for i in range(self.topLevelItemCount())]
        while iterator:
            item = iterator.pop(0)
            node_id = item.data(0, Qt.ItemDataRole.UserRole)
            if isinstance(node_id, str) and node_id:
                found[node_id] = item
            iterator.extend(item.child(i) for i in range(item.childCount()))
        return found

    def copy_selection(self) -> str:
        """Ctrl+C: the selected rows, full text, one "property<TAB>value<TAB>kind" line each."""
        lines = ["\t".join(part for part in (item.text(0), item.text(1), item.text(2)) if part)
                 for item in self.selectedItems()]
        text = "\n".join(lines)
        QApplication.clipboard().setText(text)
        return text

    def show_nothing(self, message: str = "Select a node to see its details") -> None:
        self.clear()
        self.node_id = None
        item = QTreeWidgetItem(self, [message, "", ""])
        item.setFirstColumnSpanned(True)  # the message is wider than the property column

    def _section(self, title: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(self, [title, "", ""])
        font = QFont(item.font(0))
        font.setBold(True)
        item.setFont(0, font)
        item.setFirstColumnSpanned(True)
        item.setExpanded(True)
        return item

    @staticmethod
    def _row(parent: QTreeWidgetItem, name: str, value: str, kind: str = "") -> QTreeWidgetItem:
        item = QTreeWidgetItem(parent, [name, value, kind])
        item.setToolTip(1, value)
        return item

    @classmethod
    def _node_row(cls, parent: QTreeWidgetItem, node_id: str, value: str, kind: str) -> QTreeWidgetItem:
        item = cls._row(parent, node_id, value, kind)
        item.setToolTip(0, f"{node_id}\n(double-click or Enter: select it in the graph)")
        item.setData(0, Qt.ItemDataRole.UserRole, node_id)
        return item

    def rows(self) -> dict[str, str]:
        """{"Section/Property": value} of everything shown (for tests and copy)."""
        result = {}
        for i in range(self.topLevelItemCount()):
            section = self.topLevelItem(i)
            for j in range(section.childCount()):
                child = section.child(j)
                result[f"{section.text(0)}/{child.text(0)}"] = child.text(1)
        return result

    def kinds(self) -> dict[str, str]:
        result = {}
        for i in range(self.topLevelItemCount()):
            section = self.topLevelItem(i)
            for j in range(section.childCount()):
                child = section.child(j)
                result[f"{section.text(0)}/{child.text(0)}"] = child.text(2)
        return result

    def _tensor_text(self, graph, name: str, activation: bool = True) -> str:
        value_type = graph.value_type(name)
        if value_type is None:
            return "type unknown"
        size = value_type.byte_size
        # TFLite activations are NHWC (ONNX's NCHW elsewhere): said, so 1x64x64x24 reads as 24 channels.
        layout = " NHWC" if activation and graph.channels_last and value_type.rank == 4 else ""
        return f"{value_type.dtype} {value_type.shape_text()}{layout}" + (f"  ({human_bytes(size)})" if size else "")

    def _layer_number(self, analysis, node_id: str) -> str:
        """'layer 2 of 668': the node's place among the layers that run (constants folded away), the
        numbering of the per-layer chart."""
        if self._numbered is not analysis:
            self._numbers = {m.node_id: i for i, m in enumerate(analysis.compute_nodes(), 1)}
            self._numbered = analysis
        number = self._numbers.get(node_id)
        return f"layer {number} of {len(self._numbers)}" if number else "folded constant (not run as a layer)"

    def show_node(self, loaded, node_id: str, profile=None, profile_label: str = "") -> None:
        """Fill the panel for `node_id` of `loaded` (gui.app.LoadedModel); "" clears it.

        `profile` (engine.profile.Profile, optional) adds its figures for the node.
        """
        self.setUpdatesEnabled(False)
        try:
            self.clear()
            self.node_id = node_id or None
            if not node_id:
                self.show_nothing()
                return
            analysis = loaded.analysis
            graph = analysis.graph
            group = (getattr(loaded, "groups", None) or {}).get(node_id)
            if group is not None:
                self._show_group(loaded, group, profile, profile_label)
                return
            if node_id.startswith((INPUT_PREFIX, OUTPUT_PREFIX)):
                is_input = node_id.startswith(INPUT_PREFIX)
                name = node_id[len(INPUT_PREFIX if is_input else OUTPUT_PREFIX):]
                section = self._section("Graph input" if is_input else "Graph output")
                self._row(section, "Name", name)
                self._row(section, "Tensor", self._tensor_text(graph, name))
                return
            node = graph.node(node_id)
            metrics = analysis.nodes[node_id]
            section = self._section("Node")
            self._row(section, "Op type", node.op_type + (f" ({node.domain})" if node.domain else ""))
            self._row(section, "Name", node.name or "(unnamed)")
            self._row(section, "Id", node.id)
            self._row(section, "Namespace", node.namespace or "(none)")
            self._row(section, "Stage", metrics.stage or "(none)")
            self._row(section, "Execution order", self._layer_number(analysis, node_id))
            if metrics.is_constant:
                self._row(section, "Constant", "yes: folded, drawn as a weight of its consumers")
            if node.domain == "custom":  # a TFLite custom operator: its kernel is the runtime's, or missing
                self._row(section, "Custom operator", f"{node.op_type}: runs only where the runtime has this "
                                                      "kernel registered; static cost from its shapes")
            for role, body in node.subgraphs.items():  # control flow (WHILE, IF): bodies are graphs of their own
                from gui.subgraphs import graph_title, subgraph_index
                index = subgraph_index(loaded.model, body)
                where = f"graph {graph_title(loaded.model, index)} (toolbar: Graph)" if index >= 0 else body.name
                self._row(section, f"Subgraph ({role})", where)
            if profile is not None:
                self._profile_section(profile, node_id, profile_label)

            section = self._section(f"Attributes ({len(node.attributes)})")
            for key in sorted(node.attributes):
                self._row(section, key, _attribute_text(node.attributes[key]))

            producers = loaded.producers
            section = self._section(f"Inputs ({sum(1 for n in node.inputs if n)})")
            for index, name in enumerate(node.inputs):
                if not name:
                    continue
                value = graph.values.get(name)
                producer = producers.get(name)
                if value is not None and value.initializer is not None:
                    role = "weight"
                elif producer is not None and analysis.nodes[producer.id].is_constant:
                    role = f"constant (from {producer.op_type})"
                elif producer is not None:
                    role = f"from {producer.name or producer.id}"
                else:
                    role = "graph input"
                activation = role == "graph input" or role.startswith("from ")  # weights and constants: no layout
                item = self._row(section, f"#{index} {name}", f"{self._tensor_text(graph, name, activation)} · {role}")
                item.setToolTip(0, name)
            section = self._section(f"Outputs ({sum(1 for n in node.outputs if n)})")
            for index, name in enumerate(node.outputs):
                if name:
                    self._row(section, f"#{index} {name}", self._tensor_text(graph, name)).setToolTip(0, name)
            quantized = [(name, graph.values[name].quantization) for name in dict.fromkeys(node.inputs + node.outputs)
                         if name and name in graph.values and graph.values[name].quantization]
            if quantized:
                section = self._section(f"Quantization ({len(quantized)} tensor{'s' if len(quantized) != 1 else ''})")
                for name, quantization in quantized:
                    self._row(section, name, quantization_text(quantization)).setToolTip(0, name)

            section = self._section("Static cost (estimated from shapes)")
            self._row(section, "Params", f"{human_count(metrics.params)} ({metrics.params:,})", ESTIMATED)
            self._row(section, "Weight bytes", human_bytes(metrics.param_bytes), ESTIMATED)
            if metrics.buffers:
                self._row(section, "Buffers", human_count(metrics.buffers), ESTIMATED)
            macs = "unknown" if metrics.macs is None else f"{human_count(metrics.macs)} ({metrics.macs:,})"
            self._row(section, "MACs", macs, ESTIMATED)
            self._row(section, "FLOPs", human_count(metrics.flops), ESTIMATED)
            self._row(section, "Output bytes", human_bytes(metrics.output_bytes), ESTIMATED)
            self._row(section, "Bytes moved", human_bytes(metrics.bytes_moved), ESTIMATED)
            intensity = metrics.arithmetic_intensity
            self._row(section, "Arithmetic intensity",
                      "unknown" if intensity is None else f"{intensity:.3g} FLOP/B", ESTIMATED)
            totals = analysis.totals
            if totals.macs and metrics.macs:
                self._row(section, "Share of model MACs", f"{100.0 * metrics.macs / totals.macs:.2f} %", ESTIMATED)
        finally:
            self.setUpdatesEnabled(True)

    def _show_group(self, loaded, group, profile, label: str, listed: int = 8) -> None:
        """A collapsed group: what it is, its totals (estimated), and its time in the selected profile."""
        analysis = loaded.analysis
        totals = group_totals(group, analysis, profile)
        section = self._section("Group (collapsed)")
        self._row(section, "Name", group.name)
        self._row(section, "Kind", group.kind)
        self._row(section, "Nodes", f"{totals.nodes} (double-click the box to expand it)")
        if group.parent is not None:
            self._row(section, "Inside", loaded.groups[group.parent].name)
        from gui.folded_groups import repeated_block_text
        repeated = repeated_block_text(loaded, group.id, profile)
        if repeated:
            self._row(section, "Repeated block", repeated, totals.time_kind if profile is not None else "")
        section = self._section("Totals (estimated from shapes)")
        macs = f"{human_count(totals.macs)} ({totals.macs:,})"
        if totals.unknown_cost_nodes:
            macs += f"; {totals.unknown_cost_nodes} node(s) unknown"
        self._row(section, "MACs", macs, ESTIMATED)
        self._row(section, "Params", f"{human_count(totals.params)} ({totals.params:,})", ESTIMATED)
        self._row(section, "FLOPs", human_count(totals.flops), ESTIMATED)
        self._row(section, "Output bytes", human_bytes(totals.output_bytes), ESTIMATED)
        intensity = totals.arithmetic_intensity
        self._row(section, "Arithmetic intensity",
                  "unknown" if intensity is None else f"{intensity:.3g} FLOP/B", ESTIMATED)
        if analysis.totals.macs and totals.macs:
            self._row(section, "Share of model MACs", f"{100.0 * totals.macs / analysis.totals.macs:.2f} %",
                      ESTIMATED)
        members = [m for m in group.members if not analysis.nodes[m].is_constant]
        if profile is not None:
            section = self._section(f"Profile: {label}" if label else "Profile")
            if totals.time_ms is None:
                self._row(section, "Time", "no timing for these nodes in the profile")
            else:
                kind = totals.time_kind
                self._row(section, "Time (sum)", format_ms(totals.time_ms), kind)
                total = profile.total_node_ms
                if total > 0:
                    self._row(section, "Share of total", f"{100.0 * totals.time_ms / total:.2f} %", kind)
                self._row(section, "Timed nodes", f"{totals.timed_nodes} of {totals.nodes}", kind)
            ranked = sorted((m for m in members if m in profile.nodes),
                            key=lambda m: -profile.nodes[m].time.median_ms)
            section = self._section(f"Slowest nodes ({min(listed, len(ranked))} of {len(ranked)})")
            for node_id in ranked[:listed]:
                timing = profile.nodes[node_id]
                self._node_row(section, node_id, f"{format_ms(timing.time.median_ms)}  {timing.op_type}",
                               timing.kind)
        else:
            ranked = sorted(members, key=lambda m: -(analysis.nodes[m].macs or 0))
            section = self._section(f"Heaviest nodes ({min(listed, len(ranked))} of {len(ranked)})")
            for node_id in ranked[:listed]:
                metrics = analysis.nodes[node_id]
                self._node_row(section, node_id, f"MACs {human_count(metrics.macs)}  {metrics.op_type}", ESTIMATED)

    def _profile_section(self, profile, node_id: str, label: str) -> None:
        section = self._section(f"Profile: {label}" if label else "Profile")
        timing = profile.nodes.get(node_id)
        if timing is None:
            if node_id in profile.untimed_node_ids:
                self._row(section, "Time", "not run: folded to a constant before the run")
            else:
                self._row(section, "Time", "no timing for this node in the profile")
            return
        time, kind = timing.time, timing.kind
        if time.statistic == "mean":  # the runtime's own summary (benchmark_model): mean, fastest, slowest run
            self._row(section, "Time (mean)", format_ms(time.median_ms), kind)
            self._row(section, "min / max", f"{format_ms(time.p10_ms)} / {format_ms(time.p90_ms)}", kind)
        else:
            self._row(section, "Time (median)", format_ms(time.median_ms), kind)
            self._row(section, "p10 / p90", f"{format_ms(time.p10_ms)} / {format_ms(time.p90_ms)}", kind)
        self._row(section, "Share of total", f"{100.0 * profile.share(node_id):.2f} %", kind)
        self._row(section, "Variation (CV)", f"{100.0 * time.cv:.1f} % over {time.count} runs", kind)
        how = ("measured (own kernel)" if kind == "measured"
               else "attributed (a measured total split by cost)" if kind == "attributed"
               else "derived (difference of two measured prefix models)" if kind == "derived" else kind)
        self._row(section, "Kind", how, kind)
        # The unit's own kind: measured when the runtime reported it, planned when it is Core ML's
        # compute plan; an unknown unit is shown as unknown, with no kind.
        unit_kind = getattr(timing, "compute_unit_kind", "")
        self._row(section, "Compute unit", timing.compute_unit or "unknown", unit_kind if timing.compute_unit
                  and timing.compute_unit != "unknown" else "")
        try:
            group = profile.group(timing.group_id)
        except KeyError:
            group = None
        if group is not None:
            if len(group.node_ids) > 1:
                others = len(group.node_ids) - 1
                text = (f"{group.kernel_op or 'kernel'} {group.kernel or group.group_id} "
                        f"(fused with {others} other node{'s' if others != 1 else ''})")
            else:
                text = f"own kernel ({group.kernel_op or timing.op_type})"
            self._row(section, "Group (kernel)", text).setToolTip(1, "\n".join(group.node_ids) or text)
            self._row(section, "Group time", format_ms(group.time.median_ms), group.time.kind)
            if getattr(group, "prefix_time", None) is not None:
                self._row(section, "Prefix model time", format_ms(group.prefix_time.median_ms),
                          group.prefix_time.kind)
        for transfer in node_transfers(profile).get(node_id, []):
            where = (f"{transfer.from_unit} → {transfer.to_unit}" if transfer.from_unit != transfer.to_unit
                     else transfer.to_unit)
            size = f", {human_bytes(transfer.bytes)}" if transfer.bytes is not None else ""
            moved = format_ms(transfer.time.median_ms) if transfer.time is not None else "time unknown"
            self._row(section, f"Transfer ({transfer.kind})", f"{moved}  {transfer.value} {where}{size}",
                      transfer.time.kind if transfer.time is not None else "").setToolTip(0, transfer.value)
        # output_bytes may come from static shapes when the runtime does not report it, so only
        # the runtime's own memory figure is shown here (the static one is under Static cost).
        if timing.memory_bytes is not None:
            self._row(section, "Memory (runtime)", human_bytes(timing.memory_bytes), "measured")
