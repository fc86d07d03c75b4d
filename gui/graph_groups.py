"""Collapsible groups in the graph view: a collapsed group's box text, what the scene knows
about groups (which box draws a node, which expanded groups hold it, totals), and the view's
double-click and context menu that open and close them.

The decisions (which groups, which start folded, repeated blocks) are engine.grouping's; the
geometry is engine.layout's and engine.folded_layout's.
"""
from __future__ import annotations

import weakref
from typing import Optional, Sequence

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QMenu, QStyleOptionGraphicsItem

from engine.inspect import human_bytes, human_count
from engine.layout import group_totals as engine_group_totals
from gui.graph_style import GROUP_PEN_COLOR, format_ms, is_group, labels_drawn_at

# Opened groups' frames: tinted a little darker per nesting level, so a block inside a block shows.
FRAME_FILLS = (QColor(238, 234, 248, 150), QColor(228, 222, 244, 150), QColor(216, 208, 238, 150))

_totals_cache: dict[int, dict] = {}  # id of an analysis -> {(group id, id of profile): (profile, totals)}


def _kept_totals(analysis) -> dict:
    """The totals kept for `analysis`; its entry goes with it (nothing here keeps a closed model
    alive, and an id reused by a later analysis finds no stale entry)."""
    per_model = _totals_cache.get(id(analysis))
    if per_model is None:
        per_model = _totals_cache[id(analysis)] = {}
        weakref.finalize(analysis, _totals_cache.pop, id(analysis), None)
    return per_model


def group_totals(group, analysis, profile=None):
    """engine.layout.group_totals, kept per analysis, group and profile (all immutable): a relayout of
    a folded model redraws the same groups' boxes and frames, each a sum over up to 100,000 nodes.
    An analysis's entries go with it (nothing here keeps a closed model alive)."""
    per_model = _kept_totals(analysis)
    key = (group.id, id(profile))
    found = per_model.get(key)
    if found is not None and found[0] is profile:
        return found[1]
    totals = engine_group_totals(group, analysis, profile)
    per_model[key] = (profile, totals)
    return totals


def prime_group_totals(groups: Sequence, analysis) -> None:
    """Make the totals without a profile of those of `groups` not kept yet, all at once (as
    group_totals would one by one): a new drawing's frame titles and group boxes read them."""
    from engine.group_index import figures_of_many
    from engine.layout import GroupTotals

    per_model = _kept_totals(analysis)
    missing = list({g.id: g for g in groups if (g.id, id(None)) not in per_model}.values())
    found = figures_of_many(analysis, [g.members for g in missing]) if missing else None
    for group, figures in zip(missing, found or ()):
        per_model[(group.id, id(None))] = (None, GroupTotals(**figures))


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




def frame_title(group, analysis, profile=None) -> str:
    """The title band of an opened group's frame: its name and the totals its box carried."""
    title, count, totals, time_line = group_lines(group, analysis, profile)
    return "  ·  ".join(part for part in (f"▾ {group.name}", count, totals, time_line) if part)


def group_tooltip(group, totals, opened: bool, repeated: Optional[str] = None) -> str:
    """A group's tooltip: its totals (estimated), its time with its kind, the repeated-block comparison."""
    state = "open; double-click its frame to collapse" if opened else "collapsed; double-click to expand"
    text = (f"{group.kind} {group.name}: {totals.nodes} nodes ({state})\n"
            f"MACs {human_count(totals.macs)} · params {human_count(totals.params)} · "
            f"output {human_bytes(totals.output_bytes)}  (estimated)")
    if totals.time_ms is not None:
        text += f"\ntime {format_ms(totals.time_ms)} over {totals.timed_nodes} nodes  ({totals.time_kind})"
    if repeated:
        text += f"\n{repeated}"
    return text


class FrameLayer(QGraphicsItem):
    """The frames of the opened groups (engine.folded_layout), painted in one item under the edges
    and boxes: only those in the exposed rectangle, titles only when readable.

    The titles come made (by the worker that prepared the scene).  A profile selected later
    changes them all (their time line): `retitle` makes each again when it is first painted
    or read, not all at once (Expand all on a 100,000-node model opens ~6,000 frames, whose
    titles took 0.2 s of one UI-thread turn).
    """

    def __init__(self, ids: Sequence[str], rects: np.ndarray, titles: list[str], depths: Sequence[int]):
        super().__init__()
        self.ids, self.rects, self.depths = list(ids), rects, list(depths)
        self._titles: list[Optional[str]] = titles  # None: to be made by self._title_of(group id)
        self._title_of = None
        right, bottom = rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]
        self._bounds = QRectF(float(rects[:, 0].min()), float(rects[:, 1].min()),
                              float(right.max() - rects[:, 0].min()), float(bottom.max() - rects[:, 1].min()))
        self.font = QFont()
        self.font.setPixelSize(13)
        self.font.setBold(True)
        self._metrics = QFontMetrics(self.font)
        self._pen = QPen(GROUP_PEN_COLOR, 1.5, Qt.PenStyle.DashLine)
        self._brushes = [QBrush(color) for color in FRAME_FILLS]
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.setZValue(-1)

    def boundingRect(self) -> QRectF:
        return self._bounds

    def shape(self) -> QPainterPath:
        return QPainterPath()  # clicks go to the background (drag to pan), tooltips via frame_at

    def title(self, index: int) -> str:
        """The title of frame `index`, made now if a `retitle` left it to be made."""
        title = self._titles[index]
        if title is None:
            title = self._titles[index] = self._title_of(self.ids[index])
        return title

    def titles_made(self) -> int:
        """How many titles are made (the others wait for their first paint or read)."""
        return sum(title is not None for title in self._titles)

    def retitle(self, title_of) -> None:
        """Every title changes to `title_of(group id)`: each is made when it is next painted or read."""
        self._title_of = title_of
        self._titles = [None] * len(self.ids)
        self.update()

    def frame_at(self, point: QPointF) -> Optional[str]:
        """The innermost opened group whose frame holds `point` (frames are listed outermost first)."""
        x, y, rects = point.x(), point.y(), self.rects
        inside = np.flatnonzero((rects[:, 0] <= x) & (x <= rects[:, 0] + rects[:, 2])
                                & (rects[:, 1] <= y) & (y <= rects[:, 1] + rects[:, 3]))
        if not len(inside):
            return None
        return self.ids[int(max(inside, key=lambda i: (self.depths[i], i)))]

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None) -> None:
        exposed, rects = option.exposedRect, self.rects
        shown = np.flatnonzero((rects[:, 0] + rects[:, 2] >= exposed.left()) & (rects[:, 0] <= exposed.right())
                               & (rects[:, 1] + rects[:, 3] >= exposed.top()) & (rects[:, 1] <= exposed.bottom()))
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        painter.setPen(self._pen)
        for index in shown.tolist():
            x, y, w, h = rects[index].tolist()
            painter.setBrush(self._brushes[min(self.depths[index], len(self._brushes) - 1)])
            painter.drawRoundedRect(QRectF(x, y, w, h), 8, 8)
        if not labels_drawn_at(scale):
            return
        painter.setFont(self.font)
        painter.setPen(QColor("#2e2450"))
        # Elided at each paint, not kept: ~12-16 us a title, 10 titles in a 1600x1000 view at zoom 0.3
        # where t20k (expanded) has the most frames: ~0.15 ms of a 6-11 ms repaint, and a kept copy
        # per (title, width) measured no faster (measured 2026-12-03, loaded machine).
        for index in shown.tolist():
            x, y, w, _ = rects[index].tolist()
            text = self._metrics.elidedText(self.title(index), Qt.TextElideMode.ElideRight, int(w) - 24)
            painter.drawText(QPointF(x + 20, y + 6 + self._metrics.ascent()), text)


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

    def structure_rect(self, group_id: Optional[str] = None) -> Optional[QRectF]:
        """What a first view of a grouped model should show: the outermost frames of the opened
        groups, else the collapsed groups' boxes (not the rows of graph inputs and outputs around
        them, which a KV cache makes thousands of pixels wide), or the frame of `group_id` only;
        None when nothing is grouped."""
        layout = self.loaded.layout if self.loaded is not None else None
        frames = dict(getattr(layout, "frames", None) or {})
        if group_id is not None:
            rects = [frames[group_id]] if group_id in frames else []
        elif frames:  # the opened groups (outermost): a folded export opens `model/` around its blocks
            rects = [rect for g, rect in frames.items() if self.groups[g].parent not in frames]
        else:
            rects = [tuple(self.rects[i].tolist()) for i in self.group_indexes]
        if not rects:
            return None
        left, top = min(r[0] for r in rects), min(r[1] for r in rects)
        right, bottom = max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)
        return QRectF(left, top, right - left, bottom - top)

    def enclosing_groups(self, node_id: str) -> list[str]:
        """Ids of the expanded groups that hold `node_id`, innermost first (what a collapse can close)."""
        if self.loaded is not None and getattr(self.loaded, "folded_layouts", None) is not None:
            # Nested namespaces: the node's innermost group and its parents (no walk over every member).
            from gui.folded_groups import innermost_of_model
            group, chain = innermost_of_model(self.loaded).get(node_id), []
            while group is not None:
                chain.append(group)
                group = self.groups[group].parent
            return [g for g in chain if g not in self.node_index]
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
        """A profile was selected: the time line of every collapsed group and opened frame (these
        made when first painted: see FrameLayer)."""
        profile = self.profile
        analysis = self.loaded.analysis if self.loaded is not None else None
        groups = self.groups
        if self.group_indexes and self.labels is not None:
            for index in self.group_indexes:
                self.labels.set_line(index, group_lines(groups[self.node_ids[index]], analysis, profile))
        if self.frame_layer is not None:  # not the scene: the layer must not hold it (a reference cycle)
            self.frame_layer.retitle(lambda group_id: frame_title(groups[group_id], analysis, profile))

    def frame_at(self, point: QPointF) -> Optional[str]:
        """The opened group whose frame is under `point` (innermost), or None."""
        return self.frame_layer.frame_at(point) if self.frame_layer is not None else None

    def group_tooltip(self, group_id: str) -> str:
        from gui.folded_groups import repeated_block_text
        repeated = repeated_block_text(self.loaded, group_id, self.profile) if self.loaded.groups else None
        return group_tooltip(self.groups[group_id], self.group_totals(group_id), group_id not in self.node_index,
                             repeated)


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
        if node_id is None and scene is not None:  # on an opened group's frame: close it
            frame = scene.frame_at(self.mapToScene(event.position().toPoint()))
            enclosing = [frame] if frame is not None else []
        if enclosing:
            self.groupToggled.emit(enclosing[0], True)
            event.accept()
            return
        super().mouseDoubleClickEvent(event)

    def toggle_selected_group(self, collapse: bool) -> bool:
        """Enter / Backspace: open the selected collapsed group, or close the innermost opened group
        around the selected box, as a double-click would.  False when there was none to toggle."""
        scene = self.graph_scene
        selected = [item.data(0) for item in scene.selectedItems()[:1]]
        node_id = selected[0] if selected and isinstance(selected[0], str) else None
        if node_id is None:
            return False
        if not collapse:
            target = node_id if is_group(node_id) else None
        elif is_group(node_id):
            target = scene.groups[node_id].parent
        else:
            target = next(iter(scene.enclosing_groups(node_id)), None)
        if target is not None:
            self.groupToggled.emit(target, collapse)
        return target is not None

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
        point = self.mapToScene(event.pos())
        node_id = scene.node_at(point)
        if node_id is None:
            frame = scene.frame_at(point)
            node_id = scene.groups[frame].members[0] if frame is not None else None  # offers its groups
        menu = self.group_menu(node_id)
        menu.exec(event.globalPos())
        event.accept()
