# SPDX-License-Identifier: GPL-2.0-or-later
"""The panel's Review tab: the result layer and its score filter; accept, reject and relabel
(undoable, written by Save review); Next unreviewed; merging the accepted features into a target.

Widgets and their wiring only; the work is done by :mod:`review`.
"""

from __future__ import annotations

from collections.abc import Callable

from qgis.core import QgsApplication, QgsCoordinateTransform, QgsProject
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QKeySequence
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import review, schema
from .compat import QAction
from .results import is_result_layer
from .styling import renderer_classes
from .widgets import fill_class_combo, polygon_layers, theme_button

# Shortcuts of the review actions (active while the panel is open; configurable in QGIS's
# Settings > Keyboard Shortcuts).
SHORTCUTS = {"accept": "Alt+Shift+A", "reject": "Alt+Shift+R", "next": "Alt+Shift+N"}  # free in QGIS 3.22
MIN_SCALE = 500  # Next unreviewed zooms no closer than 1:500: imagery blurs, and a small feature loses its surroundings


class ReviewPanel(QWidget):
    """The Review tab; ``message(text, level)`` reports to the user. Its ``shortcut_actions``
    belong on a widget that stays visible whichever tab shows (the dock)."""

    def __init__(self, iface, message: Callable[[str, str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("rsovReviewPanel")
        self.iface = iface
        self.message = message
        self._layer = None  # the result layer whose changes refresh the summary
        self._refresh_timer = QTimer(self)  # one refresh for the many changes of one action
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)

        self.results_combo = QgsMapLayerComboBox()
        self.results_combo.setFilters(polygon_layers())
        self.score_slider = QSlider(Qt.Orientation.Horizontal)
        self.score_slider.setRange(0, 100)
        self.score_label = QLabel("all")
        self.score_slider.valueChanged.connect(self._on_score_changed)
        self.score_slider.sliderReleased.connect(self.apply_score_filter)
        score_row = QHBoxLayout()
        score_row.addWidget(self.score_slider, 1)
        score_row.addWidget(self.score_label)

        self.accept_action = self._action(
            "Accept", SHORTCUTS["accept"], "/mIconSuccess.svg", lambda: self.set_selected_status(schema.ACCEPTED)
        )
        self.reject_action = self._action(
            "Reject",
            SHORTCUTS["reject"],
            "/mActionDeleteSelected.svg",
            lambda: self.set_selected_status(schema.REJECTED),
        )
        self.next_action = self._action(
            "Next unreviewed", SHORTCUTS["next"], "/mActionZoomToSelected.svg", self.zoom_to_next_unreviewed
        )
        self.shortcut_actions = [self.accept_action, self.reject_action, self.next_action]
        actions_row = QHBoxLayout()
        for action in self.shortcut_actions:
            button = QToolButton()
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            actions_row.addWidget(button)
        actions_row.addStretch(1)
        self.advance_check = QCheckBox("Go to the next unreviewed feature after accept/reject")
        self.advance_check.setChecked(True)

        self.undo_button = theme_button("/mActionUndo.svg", "Undo the last review change", self.undo)
        self.redo_button = theme_button("/mActionRedo.svg", "Redo the review change undone", self.redo)
        self.save_button = QPushButton(QgsApplication.getThemeIcon("/mActionSaveAllEdits.svg"), "Save review")
        self.save_button.setToolTip("Write the review to the result's file (QGIS's Save edits does it too)")
        self.save_button.clicked.connect(self.save_review)
        edits_row = QHBoxLayout()
        for widget in (self.undo_button, self.redo_button):
            edits_row.addWidget(widget)
        edits_row.addStretch(1)
        edits_row.addWidget(self.save_button)

        self.relabel_combo = QComboBox()
        relabel_button = QPushButton("Relabel selected")
        relabel_button.clicked.connect(self.relabel_selected)
        relabel_row = QHBoxLayout()
        relabel_row.addWidget(self.relabel_combo, 1)
        relabel_row.addWidget(relabel_button)

        self.target_combo = QgsMapLayerComboBox()
        self.target_combo.setFilters(polygon_layers())
        self.target_combo.setAllowEmptyLayer(True)
        merge_button = QPushButton("Merge accepted into target")
        merge_button.setToolTip(
            "Copy the accepted features into the target layer (saving the review first); "
            "features merged into it before are not copied again"
        )
        merge_button.clicked.connect(self.merge_accepted)
        self.review_summary = QLabel()
        self.review_summary.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Result layer", self.results_combo)
        form.addRow("Minimum score", score_row)
        form.addRow("Relabel as", relabel_row)
        form.addRow("Target layer", self.target_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(actions_row)
        layout.addWidget(self.advance_check)
        layout.addLayout(edits_row)
        layout.addWidget(merge_button)
        layout.addWidget(self.review_summary)
        layout.addStretch(1)

        self.results_combo.layerChanged.connect(self._on_results_layer_changed)
        self._on_results_layer_changed(self.results_combo.currentLayer())

    def _action(self, text: str, shortcut: str, icon: str, slot: Callable[[], None]) -> QAction:
        action = QAction(QgsApplication.getThemeIcon(icon), text, self)
        action.setShortcut(QKeySequence(shortcut))
        action.setToolTip(f"{text} ({shortcut})")
        action.setObjectName(f"rsov{text.title().replace(' ', '')}")
        action.triggered.connect(slot)
        return action

    def show_result(self, layer) -> None:
        """Review ``layer`` (a result that just came back)."""
        self.results_combo.setLayer(layer)

    # --- the result layer ---------------------------------------------------------------------------
    def _results_layer(self):
        layer = self.results_combo.currentLayer()
        if not is_result_layer(layer):
            self.message("Choose an rsov result layer on the Review tab.", "Warning")
            return None
        return layer

    def _on_results_layer_changed(self, layer) -> None:
        self._follow(layer if is_result_layer(layer) else None)
        if self._layer is None:
            self.relabel_combo.clear()
        else:
            fill_class_combo(self.relabel_combo, renderer_classes(layer))
            self._show_score_filter(layer)
        self.refresh()

    def _follow(self, layer) -> None:
        """Refresh the summary when ``layer`` (and no other) changes: edits, undo, redo, save."""
        if self._layer is not None:
            try:
                for signal in self._signals(self._layer):
                    signal.disconnect(self._refresh_later)
            except (TypeError, RuntimeError):
                pass  # already disconnected, or the layer is gone
        self._layer = layer
        if layer is not None:
            for signal in self._signals(layer):
                signal.connect(self._refresh_later)

    @staticmethod
    def _signals(layer):
        return (
            layer.attributeValueChanged,
            layer.editingStarted,
            layer.editingStopped,
            layer.afterCommitChanges,
            layer.subsetStringChanged,
        )

    def _refresh_later(self, *_args) -> None:
        self._refresh_timer.start()

    def refresh(self) -> None:
        """The summary, and whether Undo, Redo and Save review apply."""
        layer = self._layer
        stack = layer.undoStack() if layer is not None else None
        self.undo_button.setEnabled(bool(stack and stack.canUndo()))
        self.redo_button.setEnabled(bool(stack and stack.canRedo()))
        self.save_button.setEnabled(layer is not None and review.has_unsaved_review(layer))
        if layer is None:
            self.review_summary.setText("Segment something, or choose an rsov result layer.")
            return
        counts = review.status_counts(layer)
        min_score = review.current_score_filter(layer)
        shown = f"score ≥ {min_score:.2f} shown" if min_score else "all shown"
        unsaved = "; not saved yet" if review.has_unsaved_review(layer) else ""
        self.review_summary.setText(
            ", ".join(f"{counts.get(s, 0)} {s}" for s in schema.STATUSES) + f" ({shown}{unsaved})"
        )

    # --- the score filter ---------------------------------------------------------------------------
    def _show_score_filter(self, layer) -> None:
        """The slider at the layer's own score filter."""
        self.score_slider.blockSignals(True)
        self.score_slider.setValue(round(review.current_score_filter(layer) * 100))
        self.score_slider.blockSignals(False)
        self._show_score(self.score_slider.value())

    def _show_score(self, value: int) -> None:
        self.score_label.setText(f"≥ {value / 100:.2f}" if value else "all")

    def _on_score_changed(self, value: int) -> None:
        self._show_score(value)
        if not self.score_slider.isSliderDown():
            self.apply_score_filter()

    def apply_score_filter(self) -> None:
        """Show only features of the result layer scoring at least the slider's value."""
        layer = self.results_combo.currentLayer()
        if not is_result_layer(layer):
            return
        try:
            review.score_filter(layer, self.score_slider.value() / 100)
        except review.ReviewError as exc:
            self.message(str(exc), "Warning")
            self._show_score_filter(layer)  # back to the filter that stays
        self.refresh()

    # --- accept, reject, relabel, undo, save --------------------------------------------------------
    def _selected(self):
        layer = self._results_layer()
        if layer is None:
            return None, []
        ids = layer.selectedFeatureIds()
        if not ids:
            self.message(f"Select features of {layer.name()} first (or use Next unreviewed).", "Warning")
        return layer, ids

    def set_selected_status(self, status: str) -> None:
        """Accept or reject the selected features."""
        layer, ids = self._selected()
        if not ids:
            return
        try:
            review.set_status(layer, ids, status)
        except review.ReviewError as exc:
            self.message(str(exc), "Critical")
            return
        if self.advance_check.isChecked():
            self.zoom_to_next_unreviewed()

    def relabel_selected(self) -> None:
        """Give the selected features the class chosen in the combo box."""
        layer, ids = self._selected()
        if not ids or self.relabel_combo.currentIndex() < 0:
            return
        try:
            review.relabel(layer, ids, self.relabel_combo.currentText(), self.relabel_combo.currentData())
        except review.ReviewError as exc:
            self.message(str(exc), "Critical")

    def undo(self) -> None:
        """Undo the last change to the result layer."""
        layer = self._results_layer()
        if layer is not None:
            layer.undoStack().undo()

    def redo(self) -> None:
        """Redo the change to the result layer undone last."""
        layer = self._results_layer()
        if layer is not None:
            layer.undoStack().redo()

    def save_review(self) -> None:
        """Write the review of the result layer to its file."""
        layer = self._results_layer()
        if layer is None:
            return
        try:
            review.save_review(layer)
        except review.ReviewError as exc:
            self.message(str(exc), "Critical")
            return
        self.message(f"The review of {layer.name()} is saved.", "Success")

    # --- next unreviewed ----------------------------------------------------------------------------
    def zoom_to_next_unreviewed(self) -> None:
        """Select the next feature still marked ``new`` and show it with its surroundings."""
        layer = self._results_layer()
        if layer is None:
            return
        selected = layer.selectedFeatureIds()
        feature = review.next_unreviewed(layer, max(selected) if selected else None)
        if feature is None:
            layer.removeSelection()
            self._say_nothing_left(layer)
            return
        layer.selectByIds([feature.id()])
        self.show_feature(layer, feature)

    def _say_nothing_left(self, layer) -> None:
        hidden = review.hidden_unreviewed(layer)
        if hidden:
            self.message(
                f"{hidden} hidden by the score filter still to review: lower the minimum score to see "
                f"them (every shown feature of {layer.name()} is reviewed).",
                "Info",
            )
        else:
            self.message(f"Every feature of {layer.name()} is reviewed.", "Success")

    def show_feature(self, layer, feature) -> None:
        """Pan the map to ``feature``, or zoom to it with some surroundings (see review.review_extent)."""
        canvas = self.iface.mapCanvas()
        transform = QgsCoordinateTransform(layer.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance())
        box = transform.transformBoundingBox(feature.geometry().boundingBox())
        canvas.setExtent(review.review_extent(canvas.extent(), box, _smallest_view(canvas)))
        canvas.refresh()
        canvas.flashFeatureIds(layer, [feature.id()])

    # --- merge ------------------------------------------------------------------------------------
    def merge_accepted(self) -> None:
        """Save the review, then copy the accepted features not merged before into the target layer."""
        layer = self._results_layer()
        if layer is None:
            return
        target = self.target_combo.currentLayer()
        if target is None:
            self.message("Choose a target polygon layer to merge the accepted features into.", "Warning")
            return
        saving = review.has_unsaved_review(layer)
        try:
            if saving:
                review.save_review(layer)
            merged = review.merge_accepted(layer, target, QgsProject.instance().transformContext())
        except review.ReviewError as exc:
            self.message(str(exc), "Critical")
            return
        self.message(
            f"{'Review saved. ' if saving else ''}Accepted features of {layer.name()}: {merged.added} "
            f"added to {target.name()}, {merged.already} already merged.",
            "Success" if merged.added else "Info",
        )

    def shutdown(self) -> None:
        """Stop following the result layer."""
        self._refresh_timer.stop()
        self._follow(None)


def _smallest_view(canvas) -> float:
    """The map units across the canvas's shorter side at MIN_SCALE."""
    size = canvas.mapSettings().outputSize()
    scale = canvas.scale() or MIN_SCALE  # (0 before the canvas has a size)
    return canvas.mapUnitsPerPixel() * MIN_SCALE / scale * min(size.width(), size.height())
