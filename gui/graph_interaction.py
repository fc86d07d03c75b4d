"""Interacting with the graph: the view (zoom, pan, fit, selection, keyboard, tooltips), its
legend and its minimap.  The scene it shows is gui.graph_drawing's; the group gestures
(double-click, context menu) are gui.graph_groups'.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from PySide6.QtCore import QEvent, QPoint, QPointF, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetrics, QImage, QLinearGradient, QPainter, QPen, QTransform
from PySide6.QtWidgets import QGraphicsView, QLabel, QToolTip, QWidget

from gui.graph_drawing import GraphScene, retire_scene
from gui.graph_groups import GroupViewMixin
from gui.graph_style import (CATEGORY_COLORS, DIVERGING_STOPS, GRADIENT_STOPS, GROUP_PEN_COLOR, LABEL_MIN_SCALE,
                             OVERLAYS, RATIO_LIMIT, TOP_PEN_COLOR, UNKNOWN_COLOR, ZERO_COLOR, format_value,
                             unit_color)


class LegendWidget(QWidget):
    """A compact, semi-transparent legend in the view's bottom-left corner.

    Shows the op categories (two columns), an overlay gradient with its range and
    kind, the compute units of a profile, or the diverging ratio scale of a
    comparison.  It never takes mouse events, so nodes under it stay clickable.
    """

    ROW = 15
    WIDTH = 290  # the longest title with its kind ("Intensity (low: memory-bound)  (estimated)") unelided

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.title = "Op category"
        self.range_text: tuple[str, str] = ("", "")
        self.categories: list[str] = []
        self.swatches: list[tuple[QColor, str]] = []  # categorical rows (op categories or compute units)
        self.gradient = False
        self.diverging = False
        self.low_is_hot = False  # the gradient runs the other way (low values drawn hot)
        self.kind = ""
        self.top_count = 10
        self.top_label = ""  # what the outlined boxes are, when not "top N" (gui.numerics_view)
        self.font_ = QFont()
        self.font_.setPixelSize(11)

    def show_categories(self, categories: Sequence[str]) -> None:
        self.gradient = self.diverging = False
        self.title, self.categories, self.kind = "Op category", list(categories), ""
        self.swatches = [(QColor(CATEGORY_COLORS[c]), "collapsed group" if c == "group" else c)
                         for c in categories]
        self._resize()

    def show_units(self, units: Sequence[str], kind: str) -> None:
        self.gradient = self.diverging = False
        self.title, self.kind = "Compute unit", kind
        self.categories = list(units)
        self.swatches = [(unit_color(u), u) for u in units] + [(QColor(UNKNOWN_COLOR), "not reported")]
        self._resize()

    def show_gradient(self, title: str, low: str, high: str, kind: str = "estimated", top_count: int = 10,
                      low_is_hot: bool = False) -> None:
        self.gradient, self.diverging, self.top_label, self.low_is_hot = True, False, "", low_is_hot
        self.title, self.range_text, self.kind, self.top_count = title, (low, high), kind, top_count
        self._resize()

    def show_diverging(self, title: str, kind: str, limit: float = RATIO_LIMIT) -> None:
        self.gradient, self.diverging = True, True
        self.title, self.kind = title, kind
        self.range_text = (f"≤1/{limit:g}× faster", f"≥{limit:g}× slower")
        self._resize()

    def _resize(self) -> None:
        if self.gradient:
            rows = 4
        else:
            rows = 1 + (len(self.swatches) + 1) // 2
        self.resize(QSize(self.WIDTH, 8 + rows * self.ROW + (6 if self.gradient else 0)))
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QColor(150, 150, 150, 160))
        painter.setBrush(QColor(255, 255, 255, 190))  # semi-transparent: the graph shows through
        painter.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
        font = QFont(self.font_)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(QColor("#111111"))
        row, left, inner = self.ROW, 6, self.width() - 12
        title = self.title + (f"  ({self.kind})" if self.kind else "")
        title = QFontMetrics(font).elidedText(title, Qt.TextElideMode.ElideRight, inner)
        painter.drawText(QRectF(left, 3, inner, row), Qt.AlignmentFlag.AlignVCenter, title)
        painter.setFont(self.font_)
        if self.gradient:
            bar = QRectF(left, 4 + row, inner, 10)
            gradient = QLinearGradient(bar.topLeft(), bar.topRight())
            for t, color in (DIVERGING_STOPS if self.diverging else GRADIENT_STOPS):
                gradient.setColorAt(1 - t if self.low_is_hot and not self.diverging else t, color)
            painter.setBrush(QBrush(gradient))
            painter.setPen(QColor("#777777"))
            painter.drawRect(bar)
            painter.setPen(QColor("#111111"))
            low, high = self.range_text
            y = 16 + row
            painter.drawText(QRectF(left, y, inner, row), Qt.AlignmentFlag.AlignLeft, low)
            if self.diverging:
                painter.drawText(QRectF(left, y, inner, row), Qt.AlignmentFlag.AlignHCenter, "1×")
            painter.drawText(QRectF(left, y, inner, row), Qt.AlignmentFlag.AlignRight, high)
            y += row + 2
            if self.diverging:
                items = ((QPen(QColor("#777777")), UNKNOWN_COLOR, "in one profile only"),)
            else:
                items = ((QPen(QColor("#777777")), ZERO_COLOR, "zero"),
                         (QPen(QColor("#777777")), UNKNOWN_COLOR, "unknown"),
                         (QPen(TOP_PEN_COLOR, 2.5), QColor("#ffffff"),
                          self.top_label or f"{'lowest' if self.low_is_hot else 'top'} {self.top_count}"))
            x = left
            metrics = QFontMetrics(self.font_)
            for pen, color, text in items:
                painter.setPen(pen)
                painter.setBrush(color)
                painter.drawRect(QRectF(x + 1, y + 2, 10, 10))
                painter.setPen(QColor("#111111"))
                painter.drawText(QRectF(x + 15, y, inner, row), Qt.AlignmentFlag.AlignVCenter, text)
                x += 15 + metrics.horizontalAdvance(text) + 10
            return
        column = inner / 2
        metrics = QFontMetrics(self.font_)
        for index, (color, text) in enumerate(self.swatches):
            x = left + (index % 2) * column
            y = 4 + row * (1 + index // 2)
            painter.setBrush(color)
            painter.setPen(QColor("#777777"))
            painter.drawRect(QRectF(x + 1, y + 2, 10, 10))
            painter.setPen(QColor("#111111"))
            text = metrics.elidedText(text, Qt.TextElideMode.ElideRight, int(column - 18))
            painter.drawText(QRectF(x + 15, y, column - 15, row), Qt.AlignmentFlag.AlignVCenter, text)


_RASTER_WORKER: Optional[ThreadPoolExecutor] = None


def _raster_worker() -> ThreadPoolExecutor:
    """One thread for minimap rasters: a newer one waits behind an older one, never races it."""
    global _RASTER_WORKER
    if _RASTER_WORKER is None:
        _RASTER_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minimap-raster")
    return _RASTER_WORKER


def _blank_thumbnail(width: int, height: int) -> QImage:
    image = QImage(width, height, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(QColor(250, 250, 250, 235))
    return image


def _raster(brushes: list[QBrush], rects: np.ndarray, frames: np.ndarray, source: tuple[float, float, float, float],
            width: int, height: int) -> QImage:
    """Boxes as coloured pixels, with numpy: QGraphicsScene.render of 20,000 items took 130 ms.

    Reads no scene, so it runs in a worker thread (QImage, not QPixmap: allowed off the UI thread).
    """
    left, top, source_width, source_height = source
    background = _blank_thumbnail(width, height)
    pixels = np.frombuffer(background.constBits(), dtype=np.uint32).reshape(height, background.bytesPerLine() // 4)
    pixels = pixels[:, :width].copy()
    rgba: dict[int, int] = {}  # a few hundred distinct brushes are shared by all the boxes

    def colour(brush: QBrush) -> int:
        value = rgba.get(id(brush))
        if value is None:
            value = rgba[id(brush)] = brush.color().rgba()
        return value

    colours = np.fromiter((colour(b) for b in brushes), dtype=np.uint32, count=len(brushes))
    sx, sy = width / source_width, height / source_height
    x0 = np.clip(((rects[:, 0] - left) * sx).astype(int), 0, width - 1)
    x1 = np.clip(((rects[:, 0] + rects[:, 2] - left) * sx).astype(int), 0, width - 1)
    y0 = np.clip(((rects[:, 1] - top) * sy).astype(int), 0, height - 1)
    y1 = np.clip(((rects[:, 1] + rects[:, 3] - top) * sy).astype(int), 0, height - 1)
    if len(frames):  # opened groups: their outlines, under the boxes
        fx0 = np.clip(((frames[:, 0] - left) * sx).astype(int), 0, width - 1)
        fx1 = np.clip(((frames[:, 0] + frames[:, 2] - left) * sx).astype(int), 0, width - 1)
        fy0 = np.clip(((frames[:, 1] - top) * sy).astype(int), 0, height - 1)
        fy1 = np.clip(((frames[:, 1] + frames[:, 3] - top) * sy).astype(int), 0, height - 1)
        outline = QColor(GROUP_PEN_COLOR).rgba()
        for fleft, fright, ftop, fbottom in zip(fx0.tolist(), fx1.tolist(), fy0.tolist(), fy1.tolist()):
            pixels[[ftop, fbottom], fleft:fright + 1] = outline
            pixels[ftop:fbottom + 1, [fleft, fright]] = outline
    if len(colours):
        for dy in range(min(4, int((y1 - y0).max()) + 1)):  # each box: its few pixels (at most 4 x 12)
            rows = np.minimum(y0 + dy, y1)
            for dx in range(min(12, int((x1 - x0).max()) + 1)):
                pixels[rows, np.minimum(x0 + dx, x1)] = colours
    image = QImage(pixels.tobytes(), width, height, width * 4, QImage.Format.Format_ARGB32_Premultiplied)
    return image.copy()  # owns its pixels


class Minimap(QWidget):
    """An overview of the whole graph in the view's top-right corner, with the visible part outlined.

    The graph is drawn once into a thumbnail (QGraphicsScene.render; ~30 ms for 20,000 boxes),
    again only when the scene or its colours change (`refresh`, debounced), never while the
    person pans: each pan only repaints the thumbnail and the outline.  A big graph's thumbnail
    (a raster of coloured pixels) is painted in a worker thread from a snapshot of the boxes and
    shown when ready; one finished after a newer render started is dropped.  A click or a drag
    centres the main view on that point.
    """

    MAX_WIDTH, MAX_HEIGHT, MIN_WIDTH = 180, 220, 64
    # More boxes: drawn as pixels with numpy, edges left out.  QGraphicsScene.render costs ~50 us
    # per item: 2,800 boxes of an opened block took 160 ms on a loaded machine, in one turn.
    RENDER_ITEMS_MAX = 1000

    # A raster finished in the worker thread: (generation, image), delivered to the UI thread.
    _rasterDone = Signal(int, QImage)

    def __init__(self, view: "GraphView"):
        super().__init__(view)
        self.view = view
        self.thumbnail: Optional[QImage] = None
        self.source = QRectF()  # the scene rectangle the thumbnail shows
        # Each render bumps the generation; a raster finished for an older one is dropped.
        self._generation = 0
        self.raster_job: Optional[Future] = None  # the latest raster painted in the worker thread
        self._pending_source = QRectF()  # the scene rectangle of that raster
        self._rasterDone.connect(self._show_raster)
        # 60 ms: after the new scene's first paint, before the old scene's teardown (150 ms)
        self._refresh_timer = QTimer(self, singleShot=True, interval=60)
        self._refresh_timer.timeout.connect(lambda: self.render_thumbnail(in_background=True))
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("Overview: click or drag to move the view")

    # --- the thumbnail --------------------------------------------------------------------
    def refresh(self) -> None:
        """Render the thumbnail again soon (scene replaced or recoloured); repeated calls coalesce."""
        self._refresh_timer.start()

    def render_thumbnail(self, in_background: bool = False) -> None:
        """Draw the thumbnail now, or with in_background, paint a big graph's raster in a worker
        thread and show it when done (100k boxes: ~200 ms of numpy and brush reads, one UI turn)."""
        self._generation += 1
        scene = self.view.graph_scene
        if scene is None or not scene.complete:
            self.thumbnail = None
            self.hide()
            return
        source = scene.sceneRect()
        scale = min(self.MAX_WIDTH / max(source.width(), 1.0), self.MAX_HEIGHT / max(source.height(), 1.0))
        width = max(self.MIN_WIDTH, int(round(source.width() * scale)))
        height = max(24, int(round(source.height() * scale)))
        if len(scene.node_items) <= self.RENDER_ITEMS_MAX:
            image = _blank_thumbnail(width, height)
            painter = QPainter(image)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            # A tall, narrow graph is stretched sideways to the minimum width: an overview to steer by,
            # not a drawing to scale (the outline of the visible part is stretched the same way).
            scene.render(painter, QRectF(0, 0, width, height), source, Qt.AspectRatioMode.IgnoreAspectRatio)
            painter.end()
            self._show(source, image)
            return
        # A snapshot the UI thread may change afterwards: the list of brushes (the brushes are
        # replaced, never changed in place), box and frame rectangles.
        frames = scene.frame_layer.rects if scene.frame_layer is not None else np.zeros((0, 4))
        snapshot = (list(scene.box_brushes), np.array(scene.rects[: len(scene.box_brushes)]), np.array(frames),
                    (source.left(), source.top(), source.width(), source.height()), width, height)
        if not in_background:
            self._show(source, _raster(*snapshot))
            return
        generation = self._generation
        self._pending_source = source

        def paint() -> None:
            image = _raster(*snapshot)
            try:
                self._rasterDone.emit(generation, image)  # queued: this object lives in the UI thread
            except RuntimeError:  # the window was closed meanwhile: nobody to show it to
                pass

        self.raster_job = _raster_worker().submit(paint)

    def _show_raster(self, generation: int, image: QImage) -> None:
        if generation == self._generation:  # else the scene or its colours changed since
            self._show(self._pending_source, image)

    def _show(self, source: QRectF, image: QImage) -> None:
        self.source = source
        self.thumbnail = image
        self.resize(image.width() + 2, image.height() + 2)
        self.view.place_overlays()
        self.follow_view()

    def follow_view(self) -> None:
        """Move the outline with the view; shown only when enabled and part of the graph is out of view."""
        scene = self.view.graph_scene
        wanted = self.view.minimap_enabled and self.thumbnail is not None and scene is not None
        if wanted:
            visible = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
            items = scene.itemsBoundingRect() if len(scene.node_items) < 200 else scene.sceneRect()
            wanted = not visible.contains(items)  # a graph seen whole needs no overview
        if wanted != self.isVisible():
            self.setVisible(wanted)
        if wanted:
            self.view.place_minimap()  # the view moved: keep the selected box in sight
            self.update()

    # --- geometry: scene <-> minimap -----------------------------------------------------------
    def _target(self) -> QRectF:
        """Where the scene rectangle lands in this widget: the whole thumbnail, inside a 1-pixel frame."""
        if self.thumbnail is None or self.source.isEmpty():
            return QRectF(0, 0, 1, 1)
        return QRectF(1, 1, self.thumbnail.width(), self.thumbnail.height())

    def scene_to_map(self, point: QPointF) -> QPointF:
        target = self._target()
        return QPointF(target.left() + (point.x() - self.source.left()) / self.source.width() * target.width(),
                       target.top() + (point.y() - self.source.top()) / self.source.height() * target.height())

    def map_to_scene(self, point: QPointF) -> QPointF:
        target = self._target()
        return QPointF(self.source.left() + (point.x() - target.left()) / target.width() * self.source.width(),
                       self.source.top() + (point.y() - target.top()) / target.height() * self.source.height())

    def visible_rect(self) -> QRectF:
        """The main view's visible scene rectangle, in this widget's coordinates."""
        visible = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
        return QRectF(self.scene_to_map(visible.topLeft()), self.scene_to_map(visible.bottomRight()))

    # --- painting and input ------------------------------------------------------------
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setPen(QColor(150, 150, 150, 200))
        painter.setBrush(QColor(255, 255, 255, 200))
        painter.drawRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5))
        if self.thumbnail is None:
            return
        painter.drawImage(1, 1, self.thumbnail)
        marker = self.visible_rect().intersected(QRectF(self.rect()))
        if marker.height() < 3:  # a very tall graph: keep the marker visible
            marker.adjust(0, -(3 - marker.height()) / 2, 0, (3 - marker.height()) / 2)
        if marker.width() < 3:
            marker.adjust(-(3 - marker.width()) / 2, 0, (3 - marker.width()) / 2, 0)
        painter.setPen(QPen(QColor("#1f3fbf"), 1.5))
        painter.setBrush(QColor(31, 63, 191, 40))
        painter.drawRect(marker)

    def _move_view(self, event) -> None:
        if self.thumbnail is not None:
            self.view.centerOn(self.map_to_scene(event.position()))
        event.accept()

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._move_view(event)

    def mouseMoveEvent(self, event) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton:
            self._move_view(event)

    def wheelEvent(self, event) -> None:
        event.ignore()  # the wheel zooms the main view, not the overview


class GraphView(GroupViewMixin, QGraphicsView):
    """Zoom (wheel, keys), pan (drag the background), fit, selection signal, tooltips, legend."""

    nodeSelected = Signal(str)  # node id, "" when nothing is selected
    zoomChanged = Signal(float)
    groupToggled = Signal(str, bool)  # group id, True: collapse it / False: expand it
    allGroupsToggled = Signal(bool)  # True: collapse every group / False: expand every group

    ZOOM_STEP = 1.2
    FIT_MIN_SCALE = LABEL_MIN_SCALE  # below it labels are not drawn: Fit stops there
    MIN_SCALE, MAX_SCALE = 0.002, 8.0

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        # Full: an overlay changes the brush of every box; with minimal updates Qt merges one dirty
        # rectangle per box first (20,000 boxes: recolour 45 -> 30 ms and the repaint 20 -> 10 ms
        # with full updates, measured), and a full-viewport repaint is cheap (benchmark: redraw).
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState, True)
        self.setBackgroundBrush(QColor("#fafafa"))
        self.setMouseTracking(True)
        self.legend = LegendWidget(self)
        self.legend.hide()
        self.graph_scene: Optional[GraphScene] = None
        self.minimap_enabled = True
        self.minimap = Minimap(self)
        self.minimap.hide()
        # What the empty area says (set_empty_hint): shown while there is no graph.
        self.empty_hint = QLabel(self.viewport())
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setStyleSheet("color: #666666; font-size: 15px;")
        self.empty_hint.hide()
        self.horizontalScrollBar().valueChanged.connect(self.minimap.follow_view)
        self.verticalScrollBar().valueChanged.connect(self.minimap.follow_view)
        self.zoomChanged.connect(lambda _scale: self.minimap.follow_view())

    def set_minimap_enabled(self, enabled: bool) -> None:
        """Show or hide the overview in the top-right corner (View > Minimap)."""
        self.minimap_enabled = enabled
        self.minimap.follow_view()
        if enabled:
            self.minimap.refresh()

    def set_graph_scene(self, scene: Optional[GraphScene]) -> None:
        old = self.graph_scene
        self.graph_scene = scene
        self.setScene(scene)
        self.empty_hint.setVisible(scene is None and bool(self.empty_hint.text()))
        if scene is not None:
            scene.selectionChanged.connect(self._on_selection_changed)
            present = set(scene.categories)
            self.legend.show_categories([c for c in CATEGORY_COLORS if c in present and c != "io"])
            self.legend.show()
            self._place_legend()
        else:
            self.legend.hide()
        self.minimap.refresh()
        if old is not None:
            retire_scene(old)

    # --- selection ------------------------------------------------------------------------
    def _on_selection_changed(self) -> None:
        scene = self.graph_scene
        if scene is None:
            return
        try:
            selected = scene.selectedItems()
        except RuntimeError:  # the scene is being deleted
            return
        node_id = selected[0].data(0) if selected else ""
        self.nodeSelected.emit(node_id if isinstance(node_id, str) else "")
        self.place_minimap()

    def select_node(self, node_id: str, center: bool = True) -> None:
        """Select (and centre on) the box of `node_id`: its own, or its collapsed group's."""
        scene = self.graph_scene
        if scene is None:
            return
        node_id = scene.box_id(node_id) if node_id else None
        if node_id is None:
            return
        item = scene.item_for(node_id)
        scene.blockSignals(True)
        scene.clearSelection()
        scene.blockSignals(False)
        item.setSelected(True)
        if center:
            if self.current_scale() < 0.6:
                self.set_scale(0.8)
            self.centerOn(item)
            self.place_minimap()

    def add_to_selection(self, node_ids) -> None:
        """Select the boxes of `node_ids` too (a hint's other layers); the inspector keeps the first."""
        scene = self.graph_scene
        if scene is None:
            return
        scene.blockSignals(True)  # the inspector stays on the node selected first
        for node_id in node_ids:
            box = scene.box_id(node_id)
            if box is not None:
                scene.item_for(box).setSelected(True)
        scene.blockSignals(False)
        scene._mark_selection()

    def center_on_node(self, node_id: str) -> None:
        """Centre the view on the box of `node_id` (its own or its collapsed group's), zoom unchanged."""
        scene = self.graph_scene
        box = scene.box_id(node_id) if scene is not None else None
        if box is not None:
            x, y, w, h = scene.rects[scene.node_index[box]].tolist()
            self.centerOn(QPointF(x + w / 2, y + h / 2))
            self.place_minimap()  # even when the view could not scroll it to the centre

    def box_near_centre(self) -> Optional[str]:
        """The id of the box whose centre is nearest the middle of the view (None: no graph)."""
        scene = self.graph_scene
        if scene is None or not len(scene.rects):
            return None
        middle, rects = self.mapToScene(self.viewport().rect().center()), scene.rects
        distances = np.hypot(rects[:, 0] + rects[:, 2] / 2 - middle.x(), rects[:, 1] + rects[:, 3] / 2 - middle.y())
        return scene.node_ids[int(np.argmin(distances))]

    # --- zoom -----------------------------------------------------------------------------
    def current_scale(self) -> float:
        return self.transform().m11()

    def set_scale(self, scale: float) -> None:
        scale = min(self.MAX_SCALE, max(self.MIN_SCALE, scale))
        center = self.mapToScene(self.viewport().rect().center())
        self.setTransform(QTransform.fromScale(scale, scale))
        self.centerOn(center)
        self.zoomChanged.emit(scale)

    def zoom_by(self, factor: float) -> None:
        scale = self.current_scale()
        target = min(self.MAX_SCALE, max(self.MIN_SCALE, scale * factor))
        self.scale(target / scale, target / scale)
        self.zoomChanged.emit(target)

    def zoom_step(self, zoom_in: bool) -> float:
        """The factor of one Zoom in / Zoom out step: 1.2, but below the readable scale (FIT_MIN_SCALE)
        zooming in lands on it when it is within 8x, else goes half-way there (log scale): from the 1 %
        of a whole tall graph, two steps; zooming out halves."""
        scale = self.current_scale()
        if not zoom_in:
            return 0.5 if scale <= self.FIT_MIN_SCALE else 1 / self.ZOOM_STEP
        missing = self.FIT_MIN_SCALE / scale
        if missing <= 1:
            return self.ZOOM_STEP
        return max(self.ZOOM_STEP, missing if missing <= 8 else missing ** 0.5)

    def zoom_in(self) -> None:
        anchor = self.transformationAnchor()
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.zoom_by(self.zoom_step(True))
        self.setTransformationAnchor(anchor)

    def zoom_out(self) -> None:
        anchor = self.transformationAnchor()
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.zoom_by(self.zoom_step(False))
        self.setTransformationAnchor(anchor)

    def fit(self) -> None:
        """The whole graph when it is readable so; a tall (or wide) one at its full width, never
        below FIT_MIN_SCALE, from its top (the minimap shows the whole); a folded one wider than
        that from the top of its first blocks (`_first_screen`)."""
        scene = self.graph_scene
        if scene is None:
            return
        rect, view = scene.sceneRect(), self.viewport().rect()
        width, height = max(1.0, rect.width()), max(1.0, rect.height())
        if min(view.width() / width, view.height() / height) >= self.FIT_MIN_SCALE:
            self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)
        else:
            scale = min(1.0, max(self.FIT_MIN_SCALE, (view.width() - 8) / width))
            self.setTransform(QTransform.fromScale(scale, scale))
            shown_width, shown_height = view.width() / scale, view.height() / scale
            x = rect.center().x() if shown_width >= width else rect.left() + shown_width / 2
            across, top = None, None
            region = scene.structure_rect() if shown_width < width and scene.group_indexes else None
            if region is not None:  # a folded model wider than the window: its first blocks, not a row of inputs
                across, top = self._first_screen(region, scale)
            x, top = x if across is None else across, rect.top() if top is None else top
            self.centerOn(QPointF(x, top + shown_height / 2))
        self.zoomChanged.emit(self.current_scale())

    READABLE_SCALE = 0.75  # a group box's name, node count, MACs and params are readable from here

    def show_region(self, rect: QRectF, across: Optional[float] = None, top: Optional[float] = None) -> None:
        """Show `rect` (scene coordinates) whole when it fits at a readable zoom (never above 1:1),
        else its top at READABLE_SCALE (the view's top edge at `top` when given), centred across
        (on `across` when given, else from its left when it is wider than the view)."""
        view, margin = self.viewport().rect(), 24.0
        width, height = max(1.0, rect.width()), max(1.0, rect.height())
        scale = min(1.0, (view.width() - 2 * margin) / width, (view.height() - 2 * margin) / height)
        if scale >= self.READABLE_SCALE:
            self.setTransform(QTransform.fromScale(scale, scale))
            self.centerOn(rect.center())
        else:
            scale = self.READABLE_SCALE
            self.setTransform(QTransform.fromScale(scale, scale))
            shown_width, shown_height = view.width() / scale, view.height() / scale
            x = rect.center().x() if shown_width - 2 * margin >= width else \
                across if across is not None else rect.left() - margin + shown_width / 2
            # A little above the top: the tensors entering it (and the inputs they come from) show.
            top = rect.top() - 3 * margin if top is None else top
            self.centerOn(QPointF(x, top + shown_height / 2))
        self.zoomChanged.emit(scale)
        self.place_minimap()

    def show_start(self) -> None:
        """The first view of a model: all of it when it is readable so, else the top at a readable zoom."""
        scene = self.graph_scene
        if scene is None:
            return
        self.fit()
        if self.current_scale() > 1.0:  # a small graph (or a grouped overview): no larger than life
            self.set_scale(1.0)
            self.centerOn(scene.sceneRect().center())
        region = scene.structure_rect() if self.current_scale() < 0.55 else None
        if region is not None:  # a folded model: its groups, not the rows of inputs around them
            self.show_region(region, *self._first_screen(region, self.READABLE_SCALE))
        elif self.current_scale() < 0.55:
            self.setTransform(QTransform.fromScale(0.75, 0.75))
            rect = scene.sceneRect()
            visible_height = self.viewport().height() / 0.75
            # Centre horizontally on the first nodes (the inputs), vertically on the top of the graph.
            first = scene.rects[: min(5, len(scene.rects))]
            x = float((first[:, 0] + first[:, 2] / 2).mean()) if len(first) else rect.center().x()
            self.centerOn(QPointF(x, rect.top() + visible_height / 2))
            self.zoomChanged.emit(0.75)

    def _first_screen(self, region: QRectF, scale: float) -> tuple[Optional[float], Optional[float]]:
        """(across, top) of the first view of a folded model's `region` at `scale`; (None, None)
        when no group is collapsed (Expand all: tens of thousands of boxes, no block to look for).

        A frame wider than the window (a KV cache's hundreds of inputs spread the blocks over
        thousands of pixels): across, the window that holds the first block whole and, with it,
        the most boxes of the first screen, its boxes centred.  Top: a little above the region;
        when the chosen boxes start far below it (an empty band of the frame), a little above
        them.  Either way moved up to whole boxes when the edge would cut a row."""
        scene, margin = self.graph_scene, 24.0
        if not scene.group_indexes:
            return None, None
        shown_width, shown_height = self.viewport().width() / scale, self.viewport().height() / scale
        # One pass over the boxes: those that reach into the band a first screen can show.
        band = np.flatnonzero((scene.rects[:, 1] < region.top() + shown_height)
                              & (scene.rects[:, 1] + scene.rects[:, 3] > region.top() - 3 * margin))
        rects = scene.rects[band]
        left, top, width, height = rects.T

        def uncut(edge: float) -> float:
            cut = (top < edge) & (top + height > edge)
            return float(top[cut].min()) - margin / 2 if cut.any() else edge

        edge = uncut(region.top() - 3 * margin)
        first = np.flatnonzero((top >= region.top()) & (top + height <= edge + shown_height)
                               & (left >= region.left()) & (left + width <= region.right()))
        if len(first) == 0:
            return None, edge
        # The first block: the topmost of the first screen's big groups (a transformer's first
        # layer, not the few nodes of its rotary embedding above it), else the topmost box.
        sizes = {i: len(scene.groups[scene.node_ids[band[i]]].members) for i in first if band[i] in scene.group_indexes}
        blocks = [i for i, size in sizes.items() if 2 * size >= max(sizes.values())]
        anchor = min(blocks or first, key=lambda i: (top[i], left[i]))
        lefts, rights = left[first], left[first] + width[first]
        room = shown_width - 2 * margin  # a box keeps a margin from each side
        # The best window starts at some box's left edge: try each one that keeps the anchor whole.
        starts = lefts[(lefts <= left[anchor]) & (lefts + room >= left[anchor] + width[anchor])]
        if len(starts) == 0:  # the first block alone is wider than the window
            return float(left[anchor] + width[anchor] / 2), edge
        inside = (lefts[None, :] >= starts[:, None]) & (rights[None, :] <= starts[:, None] + room)
        best = first[inside[int(np.argmax(inside.sum(axis=1)))]]
        highest = float(top[best].min())
        if highest - edge > shown_height / 4:
            edge = uncut(highest - 3 * margin)
        return float(left[best].min() + (left[best] + width[best]).max()) / 2, edge

    def wheelEvent(self, event) -> None:
        delta = event.angleDelta().y()
        if delta == 0:
            return super().wheelEvent(event)
        self.zoom_by(self.ZOOM_STEP ** (delta / 120.0))
        event.accept()

    ARROW_STEPS = {Qt.Key.Key_Up: "up", Qt.Key.Key_Down: "down", Qt.Key.Key_Left: "left", Qt.Key.Key_Right: "right"}

    # The keyboard's double-click: open the selected group / close the one around the selection.
    GROUP_KEYS = {Qt.Key.Key_Return: False, Qt.Key.Key_Enter: False, Qt.Key.Key_Backspace: True}

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_in()
        elif event.key() == Qt.Key.Key_Minus:
            self.zoom_out()
        elif event.key() in self.ARROW_STEPS and self.graph_scene is not None \
                and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            self.step_selection(self.ARROW_STEPS[event.key()])
        elif event.key() in self.GROUP_KEYS and self.graph_scene is not None \
                and self.toggle_selected_group(self.GROUP_KEYS[event.key()]):
            pass
        else:
            super().keyPressEvent(event)

    def step_selection(self, direction: str) -> Optional[str]:
        """Move the selection along the graph (arrow keys): "up" to a producer of the selected box,
        "down" to a consumer (of several: the one nearest sideways), "left"/"right" to the next box
        of the same row.  Nothing selected: the first box.  Returns the box now selected."""
        scene = self.graph_scene
        selected = [item.data(0) for item in scene.selectedItems()]
        current = selected[0] if selected and selected[0] in scene.node_index else None
        if current is None:
            target = scene.node_ids[0] if scene.node_ids else None
        else:
            x, y, w, h = scene.rects[scene.node_index[current]].tolist()
            if direction in ("up", "down"):
                ends = [e.source for e in scene.edges if e.target == current] if direction == "up" \
                    else [e.target for e in scene.edges if e.source == current]
                candidates = [n for n in dict.fromkeys(ends) if n in scene.node_index]
            else:
                rects = scene.rects
                same_row = (rects[:, 1] < y + h) & (rects[:, 1] + rects[:, 3] > y)
                beyond = rects[:, 0] > x if direction == "right" else rects[:, 0] < x
                candidates = [scene.node_ids[i] for i in np.flatnonzero(same_row & beyond)]
            centre = x + w / 2

            def sideways(node_id: str) -> float:
                bx, _, bw, _ = scene.rects[scene.node_index[node_id]].tolist()
                return abs(bx + bw / 2 - centre)

            target = min(candidates, key=sideways, default=None)
        if target is None:
            return current
        self.select_node(target, center=False)
        self.ensureVisible(scene.item_for(target), 40, 40)
        return target

    # --- tooltips and legend --------------------------------------------------------------
    def viewportEvent(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip and self.graph_scene is not None:
            scene_pos = self.mapToScene(event.pos())
            node_id = self.graph_scene.node_at(scene_pos)
            if node_id is not None:
                text = self.graph_scene.node_tooltip(node_id)
            else:
                index = self.graph_scene.edge_near(scene_pos, 5.0 / max(self.current_scale(), 1e-6))
                text = self.graph_scene.edge_tooltip(index) if index is not None else ""
                frame = self.graph_scene.frame_at(scene_pos) if not text else None
                if frame is not None:  # an opened group's frame: its totals, time, repeated-block line
                    text = self.graph_scene.group_tooltip(frame)
            if text:
                QToolTip.showText(event.globalPos(), text, self.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.place_overlays()

    def set_empty_hint(self, text: str) -> None:
        """What the area says while it shows no graph (the main window: how to open a model)."""
        self.empty_hint.setText(text)
        self.empty_hint.setVisible(self.graph_scene is None and bool(text))
        self.place_overlays()

    def place_overlays(self) -> None:
        """The legend in the bottom-left corner, the minimap in the top-right one (or another, see
        `place_minimap`); the empty hint fills the middle."""
        self._place_legend()
        self.place_minimap()
        self.empty_hint.setGeometry(self.viewport().rect().adjusted(24, 24, -24, -24))

    def place_minimap(self) -> None:
        """Top-right, unless it would cover a selected or linked box: then the first other corner
        (top-left, bottom-right) that leaves them in sight.  The legend keeps the bottom-left."""
        viewport = self.viewport().geometry()
        size = self.minimap.size()
        right = max(0, viewport.right() - size.width() - 8)
        bottom = max(0, viewport.bottom() - size.height() - 8)
        corners = [QPoint(right, viewport.top() + 8), QPoint(viewport.left() + 8, viewport.top() + 8),
                   QPoint(right, bottom)]
        boxes = self._highlighted_boxes()
        for corner in corners:
            if not any(QRect(corner, size).intersects(box) for box in boxes):
                break
        else:
            corner = corners[0]  # covered wherever it goes: the usual place
        if corner != self.minimap.pos():
            self.minimap.move(corner)

    def _highlighted_boxes(self) -> list[QRect]:
        """The selected and linked boxes (a few), in this widget's coordinates."""
        scene = self.graph_scene
        if scene is None:
            return []
        try:
            node_ids = [item.data(0) for item in scene.selectedItems()[:8]] + scene.linked_node_ids[:8]
        except RuntimeError:  # the scene is being deleted
            return []
        offset = self.viewport().geometry().topLeft()
        return [self.mapFromScene(scene.item_for(n).sceneBoundingRect()).boundingRect().translated(offset)
                for n in node_ids if isinstance(n, str) and n in scene.node_index]

    def _place_legend(self) -> None:
        # Bottom-left: the layout starts at the top (inputs) and is centred, so the lower-left
        # corner is where boxes are least likely to be.
        viewport = self.viewport().geometry()
        self.legend.move(viewport.left() + 8, max(0, viewport.bottom() - self.legend.height() - 8))

    def update_legend(self) -> None:
        scene = self.graph_scene
        if scene is None:
            return
        key = scene.overlay_key
        spec = OVERLAYS.get(key)
        if key in ("ratio", "numerics"):
            return  # the compare view and gui.numerics_view set their own legend
        if spec is None:
            present = set(scene.categories)
            self.legend.show_categories([c for c in CATEGORY_COLORS if c in present and c != "io"])
        elif spec.formatter == "category":
            self.legend.show_units(scene.overlay_units, scene.overlay_kind or "no profile")
        else:
            low, high = scene.overlay_range or (0.0, 0.0)
            title = spec.title
            if spec.needs_profile and scene.profile is None:
                title += ": no profile"
            self.legend.show_gradient(title, format_value(low, spec.formatter, spec.unit),
                                      format_value(high, spec.formatter, spec.unit),
                                      scene.overlay_kind or "no profile", low_is_hot=spec.low_is_hot)
        self._place_legend()
        self.minimap.refresh()  # the colours changed
