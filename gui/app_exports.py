"""The main window's files: sessions saved and reopened, profiles imported and exported,
the graph exported as an image (a mixin of gui.app.MainWindow)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Optional

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QImage, QPainter, QPixmap
from PySide6.QtWidgets import QFileDialog, QMessageBox

from engine.ir import ModelLoadError
from engine.profile import Profile, ProfileFormatError
from engine.session import Session, load_profile_json, load_session, profile_analysis, save_session
from gui.app_menus import PROFILE_EXPORTS, SESSION_FILTER
from gui.graph_style import LABEL_MIN_SCALE
from gui.graph_view import OVERLAYS


class _Picture(NamedTuple):
    source: QRectF  # the scene's rectangle drawn
    scale: float
    width: int  # of the graph drawn, in pixels
    height: int
    legend: Optional[QPixmap]
    band: int  # height of the legend's band above the graph
    picture_width: int  # the graph's width, or the legend's when wider


def _main_module():
    """gui.app, imported when first needed: it imports this module (MainWindow mixes this class in)."""
    from gui import app
    return app


class ExportsMixin:
    """gui.app.MainWindow's sessions, imports and exports."""

    # --- sessions and imported profiles ---------------------------------------------------
    def current_session(self) -> Session:
        if self.loaded is None:
            raise OSError("no model is open")
        loaded = self.loaded
        return Session(loaded.path, tuple(e.profile for e in self.entries), tuple(self.sweeps),
                       self.selected_profile if self.selected_profile >= 0 else None,
                       self.overlay_combo.currentData(), loaded.grouping, tuple(sorted(loaded.collapsed)),
                       loaded.include_constants)

    def save_session_to(self, path: str) -> Path:
        written = save_session(self.current_session(), path)
        self._saved_state = self._session_state()
        return written

    def save_session_dialog(self) -> bool:
        """Ask where, and save the session; True once it is written."""
        if self.loaded is None:
            return False
        suggested = self._suggest(Path(self.loaded.path).with_suffix(".layerscope").name)
        path = self._chosen(QFileDialog.getSaveFileName(self, "Save session", suggested, SESSION_FILTER)[0])
        if not path:
            return False
        try:
            self.save_session_to(path)
        except (OSError, ValueError) as exc:
            QMessageBox.critical(self, "Cannot save session", f"{path}: {exc}")
            return False
        self.progress_label.setText(f"Saved {Path(path).name}")
        return True

    def _session_state(self) -> tuple:
        return tuple(id(e.profile) for e in self.entries), tuple(id(s) for s in self.sweeps)

    def has_unsaved_profiles(self) -> bool:
        """Profiles or sweeps in the session that were taken (or changed) since it was last saved or opened."""
        state = self._session_state()
        return any(state) and state != self._saved_state

    def confirm_leaving(self, action: str) -> bool:
        """Before `action` ("quit", "open other.onnx") drops the session: stop a running profile
        only if the person agrees, and offer to save unsaved profiles.  True: go ahead."""
        if not self.ask_before_discarding:
            return True
        if self.worker is not None:
            box = QMessageBox(QMessageBox.Icon.Question, "A profile is running",
                              f"A profile run is in progress. Stop it and {action}?", parent=self)
            box.setInformativeText("The runs it has measured so far are not kept.")
            stop = box.addButton(f"Stop and {action.split()[0]}", QMessageBox.ButtonRole.DestructiveRole)
            box.setDefaultButton(box.addButton(QMessageBox.StandardButton.Cancel))
            box.exec()
            if box.clickedButton() is not stop:
                return False
            self.stop_profile_worker()
            self._update_profile_actions()
        if not self.has_unsaved_profiles():
            return True
        box = QMessageBox(QMessageBox.Icon.Warning, "Save session?",
                          f"The session of {Path(self.loaded.path).name} has {len(self.entries)} profile(s) "
                          "that are not saved.", parent=self)
        box.setInformativeText(f"Save them before you {action}? Discarded profiles cannot be recovered.")
        box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Save:
            return self.save_session_dialog()
        return answer == QMessageBox.StandardButton.Discard

    def open_session_dialog(self) -> None:
        path = self._chosen(QFileDialog.getOpenFileName(self, "Open session", self.dialog_folder(), SESSION_FILTER)[0])
        if path:
            self.open_session(path)

    def open_session(self, path: str) -> None:
        """Read the session and open its model in a worker; the profiles come back once it is drawn.
        The shown session's unsaved profiles are asked about once the new one has opened."""
        include_constants, grouping = self.show_constants_action.isChecked(), self.grouping()

        def work(progress):
            progress("Reading session…")
            session = load_session(path)
            if session.grouping is None:  # saved before the layout was kept: the toolbar's choice
                return session, _main_module().load_model(session.model_path, include_constants, progress, grouping)
            return session, _main_module().load_model(session.model_path, session.show_constants, progress, session.grouping,
                                       frozenset(session.collapsed))

        self._start_task(work, f"Opening session {Path(path).name}",
                         self._once_agreed(f"open {Path(path).name}", self._on_session_loaded))

    def _on_session_loaded(self, result) -> None:
        session, loaded = result
        self._pending_session = session
        self._on_loaded(loaded)

    def _install_session(self, session: Session) -> None:
        self._clear_profiles()
        self.sweeps = list(session.sweeps)
        for profile in session.profiles:
            self.add_profile(profile, select=False)
        self.select_profile(session.selected if session.selected is not None else len(self.entries) - 1)
        key = session.overlay if session.overlay in OVERLAYS else "none"
        if OVERLAYS[key] is not None and OVERLAYS[key].needs_profile and not self.entries:
            key = "none"
        self.overlay_combo.blockSignals(True)
        self.overlay_combo.setCurrentIndex(self.overlay_combo.findData(key))
        self.overlay_combo.blockSignals(False)
        for k, action in self.overlay_actions.items():
            action.setChecked(k == key)
        self._saved_state = self._session_state()

    def import_profile(self, path: str) -> int:
        """Add a layerscope.profile/1 file (e.g. from `layerscope profile --json`) to the session.

        Raises ProfileFormatError when the file is not a profile or was taken of another model.
        """
        if self.loaded is None:
            raise ProfileFormatError("open the profiled model first")
        profile = load_profile_json(path)
        nodes = self.loaded.analysis.nodes
        matched = sum(1 for node_id in profile.nodes if node_id in nodes)
        if profile.nodes and matched < len(profile.nodes) / 2:
            raise ProfileFormatError(
                f"{path}: only {matched} of its {len(profile.nodes)} nodes are in {Path(self.loaded.path).name}; "
                f"it was taken of {profile.model_path or 'another model'}: open that model first")
        entry_analysis = None
        if not profile.hints:
            from engine.hints import find_hints
            entry_analysis = profile_analysis(self.loaded.path, profile, self.loaded.analysis)
            profile = profile.with_hints(find_hints(profile, entry_analysis))
        index = self.add_profile(profile, entry_analysis)
        if OVERLAYS[self.overlay_combo.currentData()] is None:
            self.set_overlay("time")
        return index

    def import_profile_dialog(self) -> None:
        path = self._chosen(QFileDialog.getOpenFileName(self, "Import profile", self.dialog_folder(),
                                                        "LayerScope profile (*.json)")[0])
        if path:
            try:
                self.import_profile(path)
            except (ProfileFormatError, ModelLoadError) as exc:
                QMessageBox.critical(self, "Cannot import profile", str(exc))

    # --- export ---------------------------------------------------------------------------
    def export_profile(self, kind: str, path: str) -> Path:
        """Write the selected profile as `kind` (a key of PROFILE_EXPORTS) with the engine's writers."""
        from engine.report import write_chrome_trace, write_csv, write_html, write_model_explorer

        entry = self.selected_entry()
        if entry is None:
            raise OSError("no profile: run one first (Profile > Run…)")
        profile = entry.profile
        if kind == "json":
            return profile.save_json(path)
        if kind == "trace":
            return write_chrome_trace(profile, path)
        analysis = self.analysis_for(entry)
        if kind == "html":
            from engine.convert import report_blockers
            rows = [row for sweep in self.sweeps for row in sweep.rows]
            # "Cannot run on Core ML: N nodes", checked at the sizes the profile ran at.
            blockers = report_blockers(self.loaded.path, profile.settings.get("input_shapes"))
            # The other profiles the session holds (targets, modes, sizes) go side by side; the selected is first.
            others = [other.profile for other in self.entries if other is not entry]
            return write_html([profile, *others], analysis, path, sweep=rows or None, blockers=blockers,
                              numerics=self.numerics_result())
        if kind == "csv":
            return write_csv(profile, analysis, path)
        if kind == "model_explorer":
            return write_model_explorer(profile, analysis, path)
        raise ValueError(f"unknown export {kind!r}; known: {', '.join(PROFILE_EXPORTS)}")

    def export_profile_dialog(self, kind: str) -> None:
        entry = self.selected_entry()
        if entry is None or self.loaded is None:
            return
        _, suffix, file_filter = PROFILE_EXPORTS[kind]
        slug = "-".join(entry.label.replace("#", "").split())
        suggested = self._suggest(f"{Path(self.loaded.path).stem}-{slug}{suffix}")
        path = self._chosen(QFileDialog.getSaveFileName(self, "Export profile", suggested, file_filter)[0])
        if path:
            try:
                self.export_profile(kind, path)
                self.progress_label.setText(f"Wrote {Path(path).name}")
            except (OSError, ValueError, ModelLoadError) as exc:
                QMessageBox.critical(self, "Export failed", f"{path}: {exc}")

    def export_dialog(self, kind: str) -> None:
        if self.scene is None:
            return
        if kind == "png":
            picture = self._picture(False)  # (grabs the legend: made once for the question)
            if picture.scale < LABEL_MIN_SCALE:
                kind = self._unreadable_png_choice(picture)
                if kind is None:
                    return
        suggested = self._suggest(Path(self.loaded.path).with_suffix("." + kind).name)
        path = self._chosen(QFileDialog.getSaveFileName(self, f"Export graph as {kind.upper()}", suggested,
                                                        f"{kind.upper()} (*.{kind})")[0])
        if path:
            try:
                self.export_graph(path)
            except OSError as exc:
                QMessageBox.critical(self, "Export failed", f"{path}: {exc}")

    def _unreadable_png_choice(self, picture: _Picture) -> str | None:
        """Asked before a PNG in which the graph would be shrunk below the scale where labels are
        drawn (the window's own limit, LABEL_MIN_SCALE): "svg", "png" (anyway) or None (cancel).

        Why not a bigger PNG: expanded big.onnx is 33,252 x 6,239,984 at full size; at the readable
        30 % that is 10,000 x 1,870,000 px, 75 GB of pixels, beyond any image.  An SVG keeps it all."""
        scale, width, height = picture.scale, picture.picture_width, picture.height + picture.band
        box = QMessageBox(QMessageBox.Icon.Warning, "The PNG would be unreadable",
                          f"At {self.PNG_MAX_SIDE:,} pixels a side at most, the PNG of this graph would be "
                          f"{width:,} x {height:,} pixels: the graph shrunk to {scale:.1%} of its size, "
                          f"where no label is drawn (they need {LABEL_MIN_SCALE:.0%}).", parent=self)
        collapse = (" Or collapse groups first (View > Group by > Collapse all groups): a smaller graph may fit."
                    if self.loaded.groups and len(self.loaded.collapsed) < len(self.loaded.groups) else "")
        box.setInformativeText("An SVG keeps every box and label at full size, to zoom into."
                               + collapse)
        svg = box.addButton("Save as SVG…", QMessageBox.ButtonRole.AcceptRole)
        png = box.addButton("Save PNG Anyway…", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(svg)
        box.exec()
        return {svg: "svg", png: "png"}.get(box.clickedButton())

    # A PNG's longest side, in pixels: a graph bigger than that is shrunk to fit.
    PNG_MAX_SIDE = 16000

    def _picture(self, svg: bool, max_side: int | None = None) -> _Picture:
        """What an export draws: the graph at its scale (SVG: 1; PNG: less for a graph bigger than
        `max_side`, else PNG_MAX_SIDE) under a band holding the legend the window shows."""
        source = self.scene.sceneRect()
        legend = self.view.legend.grab() if not self.view.legend.isHidden() else None
        band = legend.height() + 16 if legend is not None else 0
        # The legend's band is not scaled: the graph's height gets what the band leaves of the limit
        # (dividing the limit by the height plus the band made a tall graph's PNG taller than it).
        limit = max_side or self.PNG_MAX_SIDE
        scale = 1.0 if svg else min(1.0, limit / max(source.width(), 1.0),
                                    max(1, limit - band) / max(source.height(), 1.0))
        width, height = max(1, int(source.width() * scale)), max(1, int(source.height() * scale))
        # A tall model scaled to max_side is narrower than its legend: the picture is widened (the
        # graph on its left), else the legend was cut at the picture's edge.
        picture_width = max(width, legend.width() + 16 if legend is not None else 0)
        return _Picture(source, scale, width, height, legend, band, picture_width)

    def png_scale(self, max_side: int | None = None) -> float:
        """The scale of the graph in a PNG export: 1, or less for a graph bigger than the PNG's limit."""
        return self._picture(False, max_side).scale

    def export_graph(self, path: str, max_side: int | None = None) -> None:
        """Write the whole graph as PNG (at most `max_side`, else PNG_MAX_SIDE, pixels per side) or
        SVG (by suffix).

        The picture is the scene's rectangle (every box and every edge's polyline) under a band
        holding the legend the window shows (op categories, or the overlay's scale and kind).
        """
        if self.scene is None:
            raise OSError("no model is open")
        svg = path.lower().endswith(".svg")
        source, scale, width, height, legend, band, picture_width = self._picture(svg, max_side)
        if svg:
            from PySide6.QtSvg import QSvgGenerator
            device = QSvgGenerator()
            device.setFileName(path)
            device.setSize(QSize(picture_width, height + band))
            device.setViewBox(QRectF(0, 0, picture_width, height + band))
            device.setTitle(Path(self.loaded.path).name)
            device.setDescription("LayerScope graph export")
        else:
            device = QImage(picture_width, height + band, QImage.Format.Format_ARGB32_Premultiplied)
            device.fill(Qt.GlobalColor.white)
        painter = QPainter(device)
        painter.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.TextAntialiasing)
        if legend is not None:
            painter.drawPixmap(8, 8, legend)
        self.scene.render(painter, QRectF(0, band, width, height), source)
        painter.end()
        if not svg and not device.save(path):
            raise OSError(f"could not write {path}")
