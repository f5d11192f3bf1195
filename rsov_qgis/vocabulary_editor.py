# SPDX-License-Identifier: GPL-2.0-or-later
"""The panel's vocabulary editor: a table of classes (colour, synonyms), its buttons, the presets
and vocabulary files.

Widgets and their wiring only; parsing and colours are :mod:`vocabulary`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qgis.gui import QgsColorButton
from qgis.PyQt.QtCore import QSignalBlocker, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeySequence
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .vocabulary import (
    Preset,
    VocabularyClass,
    assign_colors,
    format_vocabulary,
    parse_synonyms,
    parse_typed_classes,
    parse_vocabulary,
)
from .widgets import theme_button

MIN_VISIBLE_ROWS = 5  # the table never gets smaller: the panel scrolls instead
CHOSEN = "rsovChosen"  # colour button property: its colour was chosen, not given by the row's place
COLOUR, TEXT = 0, 1  # the table's columns


class VocabularyTable(QTableWidget):
    """The class table; Paste outside a cell being edited hands the clipboard's text to ``pasted``."""

    pasted = pyqtSignal(str)

    def keyPressEvent(self, event):  # noqa: N802 (Qt's name)
        if event.matches(QKeySequence.StandardKey.Paste):
            self.pasted.emit(QApplication.clipboard().text())
        else:
            super().keyPressEvent(event)


class VocabularyEditor(QWidget):
    """The classes to segment; ``changed`` after every edit, ``message(text, level)`` reports
    file errors to the user."""

    changed = pyqtSignal()

    def __init__(self, presets: list[Preset], message: Callable[[str, str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("rsovVocabularyEditor")
        self.message = message
        self.preset_combo = QComboBox()
        self.preset_combo.addItem("Load a preset…")
        for preset in presets:
            self.preset_combo.addItem(preset.title, preset)
        self.preset_combo.activated.connect(self._on_preset_chosen)
        self.table = self._class_table()

        buttons = QHBoxLayout()
        for icon, tip, slot in (
            ("/symbologyAdd.svg", "Add a class", self.add_class),
            ("/symbologyRemove.svg", "Remove the selected class", self.remove_class),
            ("/mActionArrowUp.svg", "Move the selected class up", lambda: self.move_class(-1)),
            ("/mActionArrowDown.svg", "Move the selected class down", lambda: self.move_class(1)),
            ("/mActionFileOpen.svg", "Open a vocabulary file", self._open_dialog),
            ("/mActionFileSave.svg", "Save the vocabulary to a file", self._save_dialog),
        ):
            buttons.addWidget(theme_button(icon, tip, slot))
        buttons.addStretch(1)
        buttons.addWidget(self.preset_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)

    def _class_table(self) -> VocabularyTable:
        table = VocabularyTable(0, 2)
        table.setHorizontalHeaderLabels(["", "Class, synonyms (comma-separated)"])
        header = table.horizontalHeader()
        header.setSectionResizeMode(COLOUR, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(TEXT, QHeaderView.ResizeMode.Stretch)
        table.verticalHeader().setVisible(False)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setToolTip(
            "One class per row; the first word names the class, the others are synonyms (each "
            "is a text query; the class takes the best). Type or paste several classes with ';' "
            "between them, or one per line, to fill several rows"
        )
        table.setMinimumHeight(
            header.sizeHint().height()
            + 2 * table.frameWidth()
            + MIN_VISIBLE_ROWS * table.verticalHeader().defaultSectionSize()
        )
        table.itemChanged.connect(self._on_item_changed)
        table.pasted.connect(self.paste)
        return table

    # --- the classes ---------------------------------------------------------------------------
    def classes(self) -> list[VocabularyClass]:
        """The classes in the table (rows without words are left out)."""
        return [c for c in self.rows() if c.synonyms]

    def rows(self) -> list[VocabularyClass]:
        """Every row, empty ones included, with its colour and whether that was chosen."""
        return [
            VocabularyClass(
                parse_synonyms(self.table.item(row, TEXT).text()),
                self._button(row).color().name(),
                bool(self._button(row).property(CHOSEN)),
            )
            for row in range(self.table.rowCount())
        ]

    def set_classes(self, classes: list[VocabularyClass]) -> None:
        """Replace the table's content."""
        with QSignalBlocker(self.table):
            self.table.setRowCount(0)
            for cls in classes:
                self._insert_row(self.table.rowCount(), cls)
        self._changed()

    def add_class(self, text: str = "") -> None:
        """Add a row (in the colour of its place) and start editing it."""
        row = self.table.rowCount()
        self._insert_row(row, VocabularyClass(parse_synonyms(text or "")))  # (a button's clicked passes False)
        self.table.setCurrentCell(row, TEXT)
        self._changed()
        if not text:
            self.table.editItem(self.table.item(row, TEXT))

    def remove_class(self) -> None:
        """Remove the selected row."""
        row = self.table.currentRow()
        if row >= 0:
            self.table.removeRow(row)
            self._changed()

    def move_class(self, step: int) -> None:
        """Move the selected class up (-1) or down (+1)."""
        row = self.table.currentRow()
        rows = self.rows()
        target = row + step
        if row < 0 or not 0 <= target < len(rows):
            return
        rows[row], rows[target] = rows[target], rows[row]
        self.set_classes(rows)
        self.table.setCurrentCell(target, TEXT)

    def paste(self, text: str) -> None:
        """Put pasted classes (one per line, or ';' between them) into the table: from the current
        row on when it is empty, else below it (below the last row when none is current)."""
        classes = parse_typed_classes(text)
        if not classes:
            return
        row = self.table.currentRow()
        if row < 0 or self.rows()[row].synonyms:
            row = row + 1 if row >= 0 else self.table.rowCount()
            self._insert_row(row, VocabularyClass([]))
        self._fill_row(row, classes)
        self.table.setCurrentCell(row + len(classes) - 1, TEXT)
        self._changed()

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        """A row was typed into: several classes in it (';' between them, or pasted lines) become
        rows of their own."""
        text = item.text()
        if item.column() == TEXT and (";" in text or "\n" in text):
            self._fill_row(item.row(), parse_typed_classes(text))
        self._changed()

    def _fill_row(self, row: int, classes: list[VocabularyClass]) -> None:
        """Put the first of ``classes`` into ``row`` (keeping its colour unless the text gave one),
        the others into new rows below it."""
        first, *others = classes or [VocabularyClass([])]
        with QSignalBlocker(self.table):
            self.table.item(row, TEXT).setText(", ".join(first.synonyms))
        if first.chosen:
            self._show_colour(row, first.color, chosen=True)
        for offset, cls in enumerate(others, start=1):
            self._insert_row(row + offset, cls)

    def _insert_row(self, row: int, cls: VocabularyClass) -> None:
        """A row for ``cls`` at ``row``: its colour button and its words."""
        with QSignalBlocker(self.table):
            self.table.insertRow(row)
            button = QgsColorButton()
            button.setAllowOpacity(False)
            button.setShowNoColor(False)
            button.setMinimumWidth(44)
            button.setColorDialogTitle("Colour of the class")
            self.table.setCellWidget(row, COLOUR, button)
            self.table.setItem(row, TEXT, QTableWidgetItem(", ".join(cls.synonyms)))
        self._show_colour(row, cls.color, bool(cls.chosen))
        button.colorChanged.connect(lambda _colour: self._on_colour_chosen(button))

    # --- colours ---------------------------------------------------------------------------------
    def _button(self, row: int) -> QgsColorButton:
        return self.table.cellWidget(row, COLOUR)

    def _show_colour(self, row: int, colour: str, chosen: bool) -> None:
        button = self._button(row)
        button.setProperty(CHOSEN, chosen)
        if colour:
            with QSignalBlocker(button):
                button.setColor(QColor(colour))

    def _on_colour_chosen(self, button: QgsColorButton) -> None:
        """The analyst chose a colour (choosing the button's default colour gives the row back to
        the palette)."""
        button.setProperty(CHOSEN, button.color() != button.defaultColor())
        self._changed()

    def _recolour(self) -> None:
        """Give each row its place's palette colour (the button's default) unless its colour was chosen."""
        rows = self.rows()
        places = assign_colors([VocabularyClass(r.synonyms) for r in rows])
        for row, (cls, place) in enumerate(zip(rows, places)):
            self._button(row).setDefaultColor(QColor(place.color))
            if not cls.chosen:
                self._show_colour(row, place.color, chosen=False)

    def _changed(self) -> None:
        self._recolour()
        self.changed.emit()

    # --- presets and files ---------------------------------------------------------------------
    def _on_preset_chosen(self, index: int) -> None:
        preset = self.preset_combo.itemData(index)
        self.preset_combo.setCurrentIndex(0)
        if preset is not None:
            self.set_classes(preset.load())

    def load(self, path: str | Path) -> None:
        """Replace the vocabulary by a text file's."""
        try:
            classes = parse_vocabulary(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            self.message(f"Cannot read the vocabulary {path}: {exc}", "Critical")
            return
        if not classes:
            self.message(f"{path} holds no classes (one class per line, synonyms comma-separated).", "Warning")
            return
        self.set_classes(classes)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as a text file (readable by `rsov segment --classes-file` too)."""
        try:
            Path(path).write_text(format_vocabulary(self.classes()), encoding="utf-8")
        except OSError as exc:
            self.message(f"Cannot write {path}: {exc.strerror}", "Critical")

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open vocabulary", "", "Vocabulary (*.txt);;All files (*)")
        if path:
            self.load(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save vocabulary", "vocabulary.txt", "Vocabulary (*.txt)")
        if path:
            self.save(path)
