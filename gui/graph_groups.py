"""Collapsible groups in the graph view: a collapsed group's box text, what the scene knows
about groups (which box draws a node, which expanded groups hold it, totals), and the view's
double-click and context menu that open and close them.

The decisions (which groups, which start folded, repeated blocks) are engine.grouping's; the
geometry is engine.layout's and engine.folded_layout's.
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtWidgets import QMenu

from engine.inspect import human_count
from engine.layout import group_totals
from gui.graph_style import format_ms, is_group


def group_lines(group, analysis, profile=None) -> tuple[str, str, str, str]:
    """The text of a collapsed group's box: name, what it is, its totals, and its time in `profile`."""
    totals = group_totals(group, analysis, profile)
    macs = human_count(totals.macs) + ("+?" if totals.unknown_cost_nodes else "")
    time_line = ""
    if totals.time_ms is not None:
        time_line = f"time {format_ms(totals.time_ms)} ({totals.time_kind})"
    elif profile is not None:
        time_line = "time: not in this profile"
    return (f"▸ {group.title}", f"{group.kind} · {totals.nodes} nodes",
            f"MACs {macs} · W {human_count(totals.params)}", time_line)




class GroupSceneMixin:
    """The group side of gui.graph_drawing.GraphScene (it sets `groups`, `node_index`, `loaded`,
    `profile`, `labels`, `group_indexes`)."""

    def box_id(self, node_id: str) -> Optional[str]:
        """The id of the box drawing `node_id` here: its own, or its collapsed group's (None: not drawn)."""
        if node_id in self.node_index:
            return node_id
        layout = self.loaded.layout if self.loaded is not None else None
        box = layout.box_of(node_id) if layout is not None else None
        return box if box in self.node_index else None

    def enclosing_groups(self, node_id: str) -> list[str]:
        """Ids of the expanded groups that hold `node_id`, innermost first (what a collapse can close)."""
        if not hasattr(self, "_groups_of"):
            self._groups_of: dict[str, list[str]] = {}
            for group in sorted(self.groups.values(), key=lambda g: -g.depth):
                for member in group.members:
                    self._groups_of.setdefault(member, []).append(group.id)
        return [g for g in self._groups_of.get(node_id, ()) if g not in self.node_index]

    def group_totals(self, group_id: str):
        """engine.layout.GroupTotals of a collapsed group, with the selected profile's time."""
        return group_totals(self.groups[group_id], self.loaded.analysis, self.profile)

    def _update_group_lines(self) -> None:
        if not self.group_indexes or self.labels is None:
            return
        analysis = self.loaded.analysis
        for index in self.group_indexes:
            self.labels.set_line(index, group_lines(self.groups[self.node_ids[index]], analysis, self.profile))


class GroupViewMixin:
    """The group side of gui.graph_interaction.GraphView: double-click and context menu."""

    def mouseDoubleClickEvent(self, event) -> None:
        """On a collapsed group: expand it.  On a node inside a group: collapse the innermost one."""
        scene = self.graph_scene
        node_id = scene.node_at(self.mapToScene(event.position().toPoint())) if scene is not None else None
        if node_id is not None and is_group(node_id):
            self.groupToggled.emit(node_id, False)
            event.accept()
            return
        enclosing = scene.enclosing_groups(node_id) if node_id is not None else []
        if enclosing:
            self.groupToggled.emit(enclosing[0], True)
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def group_menu(self, node_id: Optional[str]) -> QMenu:
        """The context menu for the box `node_id` (None: the background): expand / collapse groups."""
        menu = QMenu(self)
        scene = self.graph_scene
        if scene is not None and scene.groups:
            if node_id is not None and is_group(node_id):
                group = scene.groups[node_id]
                menu.addAction(f"Expand {group.kind} “{group.name}”",
                               lambda g=node_id: self.groupToggled.emit(g, False))
            for group_id in (scene.enclosing_groups(node_id) if node_id is not None else [])[:4]:
                group = scene.groups[group_id]
                menu.addAction(f"Collapse {group.kind} “{group.name}”",
                               lambda g=group_id: self.groupToggled.emit(g, True))
            if not menu.isEmpty():
                menu.addSeparator()
            menu.addAction("Expand all groups", lambda: self.allGroupsToggled.emit(False))
            menu.addAction("Collapse all groups", lambda: self.allGroupsToggled.emit(True))
        return menu

    def contextMenuEvent(self, event) -> None:
        scene = self.graph_scene
        if scene is None or not scene.groups:
            return super().contextMenuEvent(event)
        menu = self.group_menu(scene.node_at(self.mapToScene(event.pos())))
        menu.exec(event.globalPos())
        event.accept()
