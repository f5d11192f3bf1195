# SPDX-License-Identifier: GPL-2.0-or-later
"""The panel's Segment tab: the raster, area, mode, engine and options, the vocabulary, the estimate line,
and Segment/Cancel with the job's stage and progress.

Widgets and their wiring only; the dock turns what they show into a job (:mod:`task`).
"""

from __future__ import annotations

from collections.abc import Callable

from qgis.core import Qgis, QgsApplication, QgsMapLayerProxyModel
from qgis.gui import QgsDoubleSpinBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .area import AREAS, MASK, VISIBLE
from .backend_client import ENGINE_CLIP, REFINE_SAM, InstanceOptions, SegmentOptions
from .compat import enum_value
from .engines import ENGINE_TIP, ENGINES
from .instance_panel import InstancePanel
from .paths import PRESETS
from .semantic import REFINE
from .settings import Settings
from .vocabulary import VocabularyClass, format_vocabulary, list_presets, parse_vocabulary
from .vocabulary_editor import VocabularyEditor
from .widgets import polygon_layers

DEFAULT_VOCABULARY = "building, roof, house\ntree, forest\nwater, river\n"  # in the palette's colours
AUTO_RESOLUTION = "auto (from the raster's resolution)"
SEGMENT_TIPS = {
    VISIBLE: "Segment what the map shows of the chosen raster",
    MASK: "Segment the chosen raster inside the selected polygons of the chosen layer",
}
WHOLE_TIP = "Segment the whole chosen raster"


class SegmentTab(QWidget):
    """The Segment tab; its choices are remembered in ``settings``, ``message(text, level)``
    reports to the user.

    ``segment_requested`` and ``cancel_requested``: the Segment and Cancel buttons were pressed;
    ``inputs_changed``: what the job would be made of changed (its estimate is out of date).
    """

    segment_requested = pyqtSignal()
    cancel_requested = pyqtSignal()
    inputs_changed = pyqtSignal()

    def __init__(self, iface, settings: Settings, message: Callable[[str, str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.settings = settings
        self.hold_reason = ""  # why Segment waits for the backend ("" when it need not)
        self._busy = False  # a job runs
        self._mask_layer = None  # the layer whose selection changes make the estimate out of date

        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(
            enum_value((Qgis, "LayerFilter.RasterLayer"), (QgsMapLayerProxyModel, "RasterLayer"))
        )
        self.raster_combo.setToolTip("The raster to segment (follows the active raster layer)")

        self.area_combo = QComboBox()
        for key, text, _button in AREAS:
            self.area_combo.addItem(text, key)
        self.area_combo.setToolTip(
            "What to segment: what the map shows of the raster, the whole raster (a file "
            "the backend reads), or the selected polygons of a polygon layer (pixels "
            "outside them get no class)"
        )
        self.area_combo.setCurrentIndex(max(0, self.area_combo.findData(settings.area)))
        self.mask_combo = QgsMapLayerComboBox()
        self.mask_combo.setFilters(polygon_layers())
        self.mask_combo.setToolTip("The polygon layer whose selected polygons are the processing area")
        area_row = QHBoxLayout()
        area_row.addWidget(self.area_combo)
        area_row.addWidget(self.mask_combo, 1)

        self.vocabulary_editor = VocabularyEditor(list_presets(PRESETS), message)
        self.vocabulary_editor.changed.connect(self._remember_vocabulary)

        self.mode_combo = QComboBox()
        self.mode_combo.addItem("Semantic (classes per pixel)", "semantic")
        self.mode_combo.addItem("Instance (one polygon per object)", "instance")
        self.mode_combo.setToolTip(
            "Semantic: every pixel gets a class, polygons are regions. Instance: one polygon "
            "per object; with the CLIP engine Segment Anything proposes objects and CLIP names "
            "each (the backend loads its SAM model, rsov serve --sam, on the first instance job)"
        )
        self.instance_panel = InstancePanel(iface, settings, message)
        self.mode_combo.setCurrentIndex(max(0, self.mode_combo.findData(settings.mode)))
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.engine_combo = QComboBox()
        for key, text in ENGINES:
            self.engine_combo.addItem(text, key)
        self.engine_combo.setToolTip(ENGINE_TIP)
        self.engine_combo.setCurrentIndex(max(0, self.engine_combo.findData(settings.engine)))
        self.engine_combo.currentIndexChanged.connect(self._on_engine_changed)
        self.threshold_spin = QgsDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setClearValue(0.3)
        self.threshold_spin.setValue(settings.threshold)
        self.threshold_spin.setToolTip(
            "Pixels whose best class probability is lower stay background (land cover 0.1-0.3; buildings 0.6-0.7)"
        )
        self.resolution_spin = QgsDoubleSpinBox()
        self.resolution_spin.setRange(0.0, 1000.0)
        self.resolution_spin.setDecimals(2)
        self.resolution_spin.setSingleStep(0.1)
        self.resolution_spin.setSuffix(" m/px")
        self.resolution_spin.setSpecialValueText(AUTO_RESOLUTION)
        self.resolution_spin.setClearValue(0.0)
        self.resolution_spin.setValue(settings.resolution)
        self.resolution_spin.setToolTip(
            "Ground resolution the image is analysed at. Auto: from the raster's own "
            "resolution (× 1024/448, the scale the method was tuned on). Auto or fixed, "
            "a pixel gets the same class at any zoom and for any area"
        )
        self.refine_check = QCheckBox(REFINE[0])
        self.refine_check.setToolTip(REFINE[1])
        self.refine_check.setChecked(settings.refine)
        self.threshold_spin.valueChanged.connect(self._remember_options)
        self.resolution_spin.valueChanged.connect(self._remember_options)
        self.refine_check.toggled.connect(self._remember_options)
        self.raster_combo.layerChanged.connect(self.inputs_changed)
        self.resolution_spin.valueChanged.connect(self.inputs_changed)
        self.refine_check.toggled.connect(self.inputs_changed)

        self.estimate_label = QLabel()
        self.estimate_label.setObjectName("rsovEstimate")
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setToolTip(
            "Working resolution (and its rule), working size, windows to encode (those "
            "the backend has cached are cheap) and the backend's time estimate"
        )

        self.segment_button = QPushButton(QgsApplication.getThemeIcon("/mActionZoomActual.svg"), "")
        self.segment_button.clicked.connect(self.segment_requested)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.stage_label = QLabel("Idle")
        self.stage_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.cancel_button)

        form = QFormLayout()
        form.addRow("Raster", self.raster_combo)
        form.addRow("Area", area_row)
        form.addRow("Mode", self.mode_combo)
        form.addRow("Engine", self.engine_combo)
        form.addRow("Threshold", self.threshold_spin)
        form.addRow("Resolution", self.resolution_spin)
        form.addRow(self.refine_check)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.instance_panel)
        layout.addWidget(QLabel("<b>Vocabulary</b>"))
        layout.addWidget(self.vocabulary_editor, 1)
        layout.addWidget(self.estimate_label)
        layout.addWidget(self.segment_button)
        layout.addLayout(progress_row)
        layout.addWidget(self.stage_label)
        self._on_mode_changed()  # once the instance panel has its parent
        self._on_area_changed()
        self.area_combo.currentIndexChanged.connect(self._on_area_changed)
        self.mask_combo.layerChanged.connect(self._on_mask_layer_changed)
        self._on_mask_layer_changed(self.mask_combo.currentLayer())
        self.set_vocabulary(parse_vocabulary(settings.vocabulary or DEFAULT_VOCABULARY))

    # --- what the job is made of -----------------------------------------------------------------
    def vocabulary(self) -> list[VocabularyClass]:
        """The classes of the vocabulary editor."""
        return self.vocabulary_editor.classes()

    def set_vocabulary(self, classes: list[VocabularyClass]) -> None:
        """Replace the vocabulary editor's classes."""
        self.vocabulary_editor.set_classes(classes)

    def engine(self) -> str:
        """The engine chosen: ENGINE_CLIP or ENGINE_SAM3."""
        return self.engine_combo.currentData() or ENGINE_CLIP

    def options(self) -> SegmentOptions:
        """The threshold, resolution (None: auto), refinement (the CLIP engine's alone) and engine
        (None: CLIP, the backend's default) shown."""
        clip = self.engine() == ENGINE_CLIP
        return SegmentOptions(
            threshold=self.threshold_spin.value(),
            resolution=self.resolution_spin.value() or None,
            refine=REFINE_SAM if clip and self.refine_check.isChecked() else None,
            engine=None if clip else self.engine(),
        )

    def instance_options(self) -> InstanceOptions | None:
        """The instance options shown; None in semantic mode."""
        return self.instance_panel.options() if self.mode_combo.currentData() == "instance" else None

    # --- Segment, Cancel and the job's progress --------------------------------------------------
    def set_busy(self, busy: bool) -> None:
        """A job starts (``busy``) or has ended: Segment off while it runs, Cancel on, progress reset."""
        self._busy = busy
        self._update_segment_button()
        self.cancel_button.setEnabled(busy)
        self.progress.setValue(0)
        self.stage_label.setText("Starting…" if busy else "Idle")

    def hold(self, reason: str) -> None:
        """Segment waits while ``reason`` ("" when it need not): no backend answers, or it cannot
        segment yet. When the wait ends, the stage line of the job that failed meanwhile goes."""
        if self.hold_reason and not reason and not self._busy:
            self.stage_label.setText("Idle")
        self.hold_reason = reason
        self._update_segment_button()

    def _update_segment_button(self) -> None:
        """Segment is enabled unless a job runs or it waits; its tooltip says what it segments, or
        what it waits for."""
        self.segment_button.setEnabled(not self._busy and not self.hold_reason)
        self.segment_button.setToolTip(self.hold_reason or SEGMENT_TIPS.get(self.area_combo.currentData(), WHOLE_TIP))

    # --- remembering the choices -----------------------------------------------------------------
    def _remember_options(self, *_args) -> None:
        self.settings.threshold = self.threshold_spin.value()
        self.settings.resolution = self.resolution_spin.value()
        self.settings.refine = self.refine_check.isChecked()
        self.settings.save()

    def _remember_vocabulary(self) -> None:
        classes = self.vocabulary()
        self.settings.vocabulary = format_vocabulary(classes)
        self.settings.save()
        self.instance_panel.set_classes(classes)
        self.inputs_changed.emit()

    def _on_mode_changed(self, *_args) -> None:
        self.settings.mode = self.mode_combo.currentData()
        self.settings.save()
        self.instance_panel.setVisible(self.settings.mode == "instance")
        self._show_engine_options()
        self.inputs_changed.emit()

    def _on_engine_changed(self, *_args) -> None:
        self.settings.engine = self.engine()
        self.settings.save()
        self._show_engine_options()
        self.inputs_changed.emit()

    def _show_engine_options(self) -> None:
        """Refining with SAM's regions is for the CLIP engine in semantic mode; SAM 3 uses no point grid."""
        self.refine_check.setVisible(self.settings.mode == "semantic" and self.engine() == ENGINE_CLIP)
        self.instance_panel.set_engine(self.engine())

    def _on_area_changed(self, *_args) -> None:
        area = self.area_combo.currentData()
        self.settings.area = area
        self.settings.save()
        button = next(text for key, _, text in AREAS if key == area)
        layer = self.mask_combo.currentLayer()
        self.segment_button.setText(f"{button} of {layer.name()}" if area == MASK and layer else button)
        self._update_segment_button()
        self.mask_combo.setEnabled(area == MASK)
        self.inputs_changed.emit()

    def _on_mask_layer_changed(self, layer) -> None:
        self._follow_mask_layer(layer)
        self._on_area_changed()

    def _follow_mask_layer(self, layer) -> None:
        """The estimate is out of date when the selection of ``layer`` (and no other) changes."""
        if self._mask_layer is not None:
            try:
                self._mask_layer.selectionChanged.disconnect(self.inputs_changed)
            except (TypeError, RuntimeError):
                pass  # already disconnected, or the layer is gone
        self._mask_layer = layer
        if layer is not None:
            layer.selectionChanged.connect(self.inputs_changed)

    def shutdown(self) -> None:
        """Stop the instance panel's work and following the mask layer (plugin unload)."""
        self.instance_panel.shutdown()
        self._follow_mask_layer(None)
