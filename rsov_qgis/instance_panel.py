# SPDX-License-Identifier: GPL-2.0-or-later
"""The panel's instance-mode part: the options, and the project's example objects.

Widgets and their wiring only; examples are kept by :mod:`examples`.
"""

from __future__ import annotations

from collections.abc import Callable

from qgis.core import QgsProject, QgsRasterLayer
from qgis.gui import QgsCollapsibleGroupBox, QgsDoubleSpinBox, QgsSpinBox
from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QWidget

from .backend_client import ENGINE_SAM3, InstanceOptions
from .engines import NOT_FOR_SAM3, SAM_GRID_ONLY
from .examples import ExampleError, ExampleSet, project_examples, selected_polygons, store_examples
from .extent import RasterRequest
from .instance import CLASS_PROMPTS, NUMBER_OPTIONS, NumberOption
from .settings import Settings
from .vocabulary import VocabularyClass
from .widgets import counted, fill_class_combo, theme_button


class InstancePanel(QgsCollapsibleGroupBox):
    """Instance options and examples; ``message(text, level)`` reports to the user."""

    def __init__(self, iface, settings: Settings, message: Callable[[str, str], None], parent: QWidget | None = None):
        super().__init__("Instance mode", parent)
        self.setObjectName("rsovInstancePanel")
        self.iface = iface
        self.settings = settings
        self.message = message
        self.class_names: list[str] = []

        form = QFormLayout(self)
        self.spins = {option.key: self._spin(option) for option in NUMBER_OPTIONS}
        for option in NUMBER_OPTIONS:
            form.addRow(option.label, self.spins[option.key])
        self.prompts_check = QCheckBox(CLASS_PROMPTS[0])
        self.prompts_check.setToolTip(CLASS_PROMPTS[1])
        self.prompts_check.setChecked(settings.class_prompts)
        self.prompts_check.toggled.connect(self._remember)
        form.addRow(self.prompts_check)

        self.example_class_combo = QComboBox()
        self.example_class_combo.setToolTip("The class the selected polygons are examples of")
        add_button = QPushButton("Use selected")
        add_button.setToolTip(
            "Keep the selected polygons of the active layer (a result layer or one you "
            "drew) in the project as examples of this class; instance jobs use them to "
            "recognise objects like them"
        )
        add_button.clicked.connect(self.add_selected_examples)
        add_row = QHBoxLayout()
        add_row.addWidget(self.example_class_combo, 1)
        add_row.addWidget(add_button)
        self.examples_label = QLabel()
        self.examples_label.setWordWrap(True)
        examples_row = QHBoxLayout()
        examples_row.addWidget(self.examples_label, 1)
        examples_row.addWidget(
            theme_button("/mActionDeleteSelected.svg", "Clear the project's examples", self.clear_examples)
        )
        form.addRow("Examples of", add_row)
        form.addRow(examples_row)

        project = QgsProject.instance()
        project.readProject.connect(self.refresh_examples)
        project.cleared.connect(self.refresh_examples)
        self.refresh_examples()

    def _spin(self, option: NumberOption) -> QgsDoubleSpinBox | QgsSpinBox:
        spin = QgsSpinBox() if option.decimals == 0 else QgsDoubleSpinBox()
        if option.decimals:
            spin.setDecimals(option.decimals)
            spin.setSingleStep(0.05)
        spin.setRange(option.minimum, option.maximum)
        spin.setClearValue(option.default)
        spin.setValue(getattr(self.settings, option.key))
        spin.setToolTip(option.tip)
        spin.valueChanged.connect(self._remember)
        return spin

    def _remember(self, *_args) -> None:
        for key, spin in self.spins.items():
            setattr(self.settings, key, spin.value())
        self.settings.class_prompts = self.prompts_check.isChecked()
        self.settings.save()

    def set_engine(self, engine: str) -> None:
        """Follow the engine: SAM 3 does not use Segment Anything's point grid, so its options are off."""
        grid = engine != ENGINE_SAM3
        tips = [(self.spins[o.key], o.tip) for o in NUMBER_OPTIONS if o.key in SAM_GRID_ONLY]
        for widget, tip in [*tips, (self.prompts_check, CLASS_PROMPTS[1])]:
            widget.setEnabled(grid)
            widget.setToolTip(tip if grid else f"{NOT_FOR_SAM3}. {tip}")

    def options(self) -> InstanceOptions:
        """The options shown."""
        return InstanceOptions(
            **{key: spin.value() for key, spin in self.spins.items()}, class_prompts=self.prompts_check.isChecked()
        )

    # --- examples ------------------------------------------------------------------------------
    def set_classes(self, classes: list[VocabularyClass]) -> None:
        """Follow the vocabulary: the classes examples can be given for."""
        self.class_names = [c.name for c in classes]
        fill_class_combo(self.example_class_combo, classes)
        self.refresh_examples()

    def examples(self) -> ExampleSet:
        """The project's examples (ExampleError when they cannot be read)."""
        return project_examples(QgsProject.instance())

    def job_examples(
        self, classes: list[VocabularyClass], layer: QgsRasterLayer, request: RasterRequest
    ) -> dict | None:
        """The examples to send with an instance job of ``classes`` on ``request`` (ExampleError as above)."""
        return self.examples().for_job(
            [c.name for c in classes], layer, request, QgsProject.instance().transformContext()
        )

    def add_selected_examples(self) -> None:
        """Keep the selected polygons of the active layer as examples of the chosen class."""
        name = self.example_class_combo.currentText()
        if not name:
            self.message("Add classes to the vocabulary first: examples belong to one of them.", "Warning")
            return
        layer = self.iface.activeLayer()
        project = QgsProject.instance()
        try:
            examples = self.examples()
            count = examples.add(name, selected_polygons(layer), layer.crs(), project.transformContext())
        except ExampleError as exc:
            self.message(str(exc), "Warning")
            return
        store_examples(project, examples)
        self.refresh_examples()
        self.message(f"{counted(count, 'example')} of {name} kept in the project.", "Success")

    def clear_examples(self) -> None:
        """Forget the project's examples."""
        store_examples(QgsProject.instance(), ExampleSet())
        self.refresh_examples()

    def refresh_examples(self, *_args) -> None:
        """Show how many examples each class has."""
        try:
            counts = self.examples().counts()
        except ExampleError as exc:
            self.examples_label.setText(str(exc))
            return
        known = {name.lower() for name in self.class_names}
        parts = [
            f"{name}: {count}" + ("" if name.lower() in known else " (not in the vocabulary)")
            for name, count in counts.items()
        ]
        self.examples_label.setText(
            ", ".join(parts) if parts else "None: select polygons of a layer, choose their class, press Use selected."
        )

    def shutdown(self) -> None:
        """Stop following the project."""
        project = QgsProject.instance()
        for signal in (project.readProject, project.cleared):
            try:
                signal.disconnect(self.refresh_examples)
            except TypeError:
                pass  # already disconnected
