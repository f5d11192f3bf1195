# SPDX-License-Identifier: GPL-2.0-or-later
"""The model the backend loads and the weights of the backend's models, in the panel.

``model_combo`` chooses the CLIP model Start backend loads, from the backend's list (``GET
/v1/models``; free text stays possible, e.g. ``ARCH@/path/to/file.pt``). The panel itself chooses
whose weights to fetch (every model with a weights file, Segment Anything's and SAM 3's too; it
follows the model chosen above) with Download and Import weights file…, and shows the bytes as they
arrive and the outcome. The backend does the transfers; the panel asks for them and polls the model
list from a timer, each call in a worker thread, so QGIS never waits for the backend.

A gated model (SAM 3) is downloaded with the Hugging Face read token typed into the panel: sent with
that download only, never saved (the backend does not keep it either). Its failure shows whole: it
names the licence step.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from qgis.PyQt.QtCore import QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .backend_client import DEFAULT_MODEL, BackendClient, BackendError, ModelInfo, Transfer, first_sentence
from .background import BackgroundCalls
from .engines import SAM3_LICENCE_URL

POLL_MS = 500
PROGRESS_STEPS = 1000  # the bar counts thousandths: byte counts overflow its int
OK_COLOUR, BAD_COLOUR, IDLE_COLOUR = "#2e7d32", "#c62828", "#757575"
VERBS = {"download": ("Downloading", "Downloaded"), "import": ("Importing", "Imported")}
WEIGHTS_FILTER = "Weights (*.pt *.pth *.bin *.safetensors);;All files (*)"
NO_LIST = "Start the backend (or check the connection) to list its models and fetch their weights."
HUB_PLACEHOLDER = "Hugging Face read token (hf_…), not saved"
HUB_TIP = (
    "A gated model's weights are downloaded with the Hugging Face read token of an account that has "
    "accepted its licence. It is sent to the backend with this download only, and saved neither by "
    "the plugin nor by the backend. Empty: the backend's own (HF_TOKEN, RSOV_HF_TOKEN or `hf auth login`)"
)
HUB_STEPS = "make a <i>read</i> token (hub Settings → Access Tokens) and paste it here, then Download."


def gated_steps(info: ModelInfo) -> str:
    """What a person does before a gated model's download (rich text, with the licence page's link)."""
    if info.kind == "sam3":
        where = f'sign in at <a href="{SAM3_LICENCE_URL}">{SAM3_LICENCE_URL}</a> and accept the licence'
    else:
        where = "accept its licence on its Hugging Face page"
    return f"{html.escape(info.name)}'s weights are gated: {where}, {HUB_STEPS}"


def _combo(tip: str, editable: bool = False) -> QComboBox:
    combo = QComboBox()
    combo.setEditable(editable)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(16)  # long model names must not widen the panel
    combo.setToolTip(tip)
    return combo


def _fill(combo: QComboBox, models: list[ModelInfo]) -> None:
    """Replace the items (text: the model's label, data: its name) without signals."""
    combo.blockSignals(True)
    combo.clear()
    for info in models:
        combo.addItem(info.label(), info.name)
    combo.blockSignals(False)


class ModelsPanel(QWidget):
    """Emits ``changed()`` when the user chooses another model in ``model_combo`` and
    ``transferred(name)`` when a download or import of ``name``'s weights has ended (done or failed)."""

    changed = pyqtSignal()
    transferred = pyqtSignal(str)

    def __init__(self, model: str, client: Callable[[], BackendClient], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("rsovModelsPanel")
        self._client = client  # the configured backend, asked anew for each transfer (the URL may change)
        self._models: dict[str, ModelInfo] = {}  # the backend's models with a weights file, by name
        self._transfer: tuple[str, BackendClient] | None = None  # the model whose weights move, and from where
        self._outcome: tuple[str, str, str, str] | None = None  # the last transfer's (model, text, colour, detail)
        self._poll_timer = QTimer(self)
        self._poll_timer.setSingleShot(True)  # the next poll once the last one has answered
        self._poll_timer.setInterval(POLL_MS)
        self._poll_timer.timeout.connect(self._poll)
        self._calls = BackgroundCalls(self)
        self._calls.done.connect(self._on_answer)

        self.model_combo = _combo(
            "The CLIP model Start backend loads, from the backend's list (weights present or "
            "missing, and their size); or type ARCH@/path/to/checkpoint.pt",
            editable=True,
        )
        self.model_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model_combo.lineEdit().setPlaceholderText(f"backend default ({DEFAULT_MODEL})")
        self.model_combo.setEditText(model)
        self.model_combo.currentTextChanged.connect(self._follow_model)
        self.model_combo.activated.connect(lambda _index: self.changed.emit())
        self.model_combo.lineEdit().editingFinished.connect(self.changed.emit)
        self.weights_combo = _combo(
            "The model whose weights Download and Import weights file… fetch into the "
            "backend's cache (Segment Anything's for instance mode too, SAM 3's for the SAM 3 engine)"
        )
        self.weights_combo.currentIndexChanged.connect(self._describe)
        self.download_button = QPushButton("Download")
        self.download_button.setToolTip(
            "The backend downloads the weights into its cache, verified against their known sha256"
        )
        self.download_button.clicked.connect(self.download)
        self.token_edit = QLineEdit()
        self.token_edit.setObjectName("rsovHubToken")
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setClearButtonEnabled(True)
        self.token_edit.setPlaceholderText(HUB_PLACEHOLDER)
        self.token_edit.setToolTip(HUB_TIP)
        self.token_edit.returnPressed.connect(self.download)
        self.gated_label = QLabel()
        self.gated_label.setObjectName("rsovGatedSteps")
        self.gated_label.setWordWrap(True)
        self.gated_label.setOpenExternalLinks(True)
        self.gated_box = QWidget()  # shown for a gated model only
        gated = QVBoxLayout(self.gated_box)
        gated.setContentsMargins(0, 0, 0, 0)
        gated.addWidget(self.gated_label)
        token_row = QHBoxLayout()
        token_label = QLabel("Hub token")
        token_label.setToolTip(HUB_TIP)
        token_label.setBuddy(self.token_edit)
        token_row.addWidget(token_label)
        token_row.addWidget(self.token_edit, 1)
        gated.addLayout(token_row)
        self.import_button = QPushButton("Import weights file…")
        self.import_button.setToolTip(
            "A weights file downloaded elsewhere (air-gapped sites), on the backend's "
            "machine: the backend verifies it and copies it into its cache"
        )
        self.import_button.clicked.connect(self._choose_import_file)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.info_label = QLabel()
        self.info_label.setObjectName("rsovModelInfo")
        self.info_label.setWordWrap(True)

        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.import_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.weights_combo)
        layout.addWidget(self.gated_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)  # a row of its own: its text is the bytes
        layout.addWidget(self.info_label)
        self._describe()

    # --- the choices -------------------------------------------------------------------------
    def model(self) -> str:
        """The chosen model's name ("" for the backend's default)."""
        text = self.model_combo.currentText().strip()
        index = self.model_combo.findText(text)
        return self.model_combo.itemData(index) if index >= 0 else text

    def set_model(self, name: str) -> None:
        """Choose ``name`` (a listed model or free text) as the model to load, as the user would."""
        self._show_model(name)
        self.changed.emit()

    def weights_model(self) -> str:
        """The model whose weights Download and Import fetch ("" before the list arrives)."""
        return self.weights_combo.currentData() or ""

    def set_weights_model(self, name: str) -> None:
        """Choose the model whose weights to fetch (the first listed when ``name`` is not)."""
        self.weights_combo.setCurrentIndex(max(0, self.weights_combo.findData(name)))

    def set_models(self, models: list[ModelInfo]) -> None:
        """Fill both lists from the backend's, keeping the choices."""
        chosen, fetched = self.model(), self.weights_model()
        self._models = {m.name: m for m in models if m.takes_weights}
        _fill(self.model_combo, [m for m in models if m.kind == "clip"])
        self._show_model(chosen)
        _fill(self.weights_combo, [m for m in models if m.takes_weights])
        self.set_weights_model(fetched or self.model() or DEFAULT_MODEL)
        self._describe()

    def _show_model(self, name: str) -> None:
        self.model_combo.setCurrentIndex(self.model_combo.findData(name))  # -1 (no item) for free text
        if self.model_combo.currentIndex() < 0:
            self.model_combo.setEditText(name)

    def _follow_model(self, *_args) -> None:
        """The weights shown are the chosen model's, where it has a weights file."""
        index = self.weights_combo.findData(self.model() or DEFAULT_MODEL)
        if index >= 0:
            self.weights_combo.setCurrentIndex(index)

    def _describe(self, *_args) -> None:
        """The weights of the model shown in one line (the outcome of the last transfer, when it
        was this model's), and which buttons apply."""
        name = self.weights_model()
        info = self._models.get(name)
        if self._outcome is not None and self._outcome[0] == name:
            self._show(*self._outcome[1:])
        elif info is None:
            self._show(NO_LIST, IDLE_COLOUR)
        elif info.weights_present:
            self._show(f"{name}: weights present.", IDLE_COLOUR)
        else:
            self._show(f"{name}: weights missing. Download them, or import a file downloaded elsewhere.", IDLE_COLOUR)
        gated = info is not None and info.gated and not info.weights_present
        if info is not None and gated:
            self.gated_label.setText(gated_steps(info))
        self.gated_box.setVisible(gated)
        self._enable_buttons()

    def _enable_buttons(self) -> None:
        info = self._models.get(self.weights_model())
        idle = self._transfer is None
        self.download_button.setEnabled(idle and info is not None and info.downloadable)
        self.import_button.setEnabled(idle and info is not None)
        self.weights_combo.setEnabled(idle)
        self.token_edit.setEnabled(idle)

    def _show(self, text: str, colour: str, detail: str = "") -> None:
        self.info_label.setText(text)
        self.info_label.setStyleSheet(f"color: {colour}")
        self.info_label.setToolTip(detail)

    # --- transfers ---------------------------------------------------------------------------
    def download(self) -> None:
        """Have the backend download the weights of the model shown (a gated one's with the token typed)."""
        name = self.weights_model()
        if not name or self._transfer is not None:
            return
        info = self._models.get(name)
        token = self.token_edit.text().strip() if info is not None and info.gated else ""
        self._begin(name, lambda client: client.download_model(name, token or None))

    def import_file(self, path: str) -> None:
        """Have the backend verify the weights file ``path`` (on its machine) and copy it into its
        cache as the weights of the model shown."""
        name = self.weights_model()
        if name:
            self._begin(name, lambda client: client.import_model(name, path), local_only=True)

    def _choose_import_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Import the weights of {self.weights_model()}", "", WEIGHTS_FILTER)
        if path:
            self.import_file(path)

    def _begin(self, name: str, request: Callable[[BackendClient], Transfer], local_only: bool = False) -> None:
        """Send the request in a worker thread; its answer starts the polling."""
        try:
            client = self._client()
        except BackendError as exc:
            self._end(name, str(exc), BAD_COLOUR)
            return
        if local_only and not client.is_local:
            self._end(
                name,
                f"The backend at {client.url} reads the file on its own machine: import it there "
                "(`rsov models --import FILE`).",
                BAD_COLOUR,
            )
            return
        self._transfer, self._outcome = (name, client), None
        self._enable_buttons()
        self.progress.setRange(0, 0)  # busy until the first bytes
        self.progress.setVisible(True)
        self._show(f"Asking the backend for the weights of {name}…", IDLE_COLOUR)
        self._calls.start(name, lambda: request(client))

    def _poll(self) -> None:
        transfer = self._transfer
        if transfer is None:
            return  # stopped meanwhile
        name, client = transfer
        self._calls.start(name, client.models)

    def _on_answer(self, _name: str, result: Transfer | list[ModelInfo] | BackendError) -> None:
        """The backend's answer to the request (a Transfer) or to a poll (the model list)."""
        if self._transfer is None:
            return  # stopped meanwhile
        name = self._transfer[0]
        if isinstance(result, BackendError):
            self._end(name, str(result), BAD_COLOUR)
            return
        transfer: Transfer | None
        if isinstance(result, list):
            self.set_models(result)
            info = self._models.get(name)
            transfer = info.transfer if info is not None else None
            if transfer is None:
                self._end(
                    name,
                    f"The backend no longer knows of a transfer of {name}'s weights (did it restart?).",
                    BAD_COLOUR,
                )
                return
        else:
            transfer = result
        if transfer.finished:
            self._finished(name, transfer)
        else:
            self._show_progress(name, transfer)
            self._poll_timer.start()

    def _show_progress(self, name: str, transfer: Transfer) -> None:
        verb = VERBS.get(transfer.kind, ("Fetching", ""))[0]
        if transfer.total_bytes:
            self.progress.setRange(0, PROGRESS_STEPS)
            self.progress.setValue(round(PROGRESS_STEPS * transfer.done_bytes / transfer.total_bytes))
            self.progress.setFormat(transfer.amount())
            self._show(f"{verb} the weights of {name}…", IDLE_COLOUR)
        else:
            self.progress.setRange(0, 0)
            self._show(f"{verb} the weights of {name}: {transfer.amount()}…", IDLE_COLOUR)

    def _finished(self, name: str, transfer: Transfer) -> None:
        info = self._models.get(name)
        gated = info is not None and info.gated
        if transfer.state == "done":
            verb = VERBS.get(transfer.kind, ("", "Fetched"))[1]
            if gated:
                self.token_edit.clear()  # its work is done: it is not kept in the panel either
            self._end(name, f"{verb} the weights of {name}: {transfer.path}", OK_COLOUR)
        else:
            error = transfer.error or "The backend gave no reason."
            # a gated model's refusal whole: what follows its first sentence is the licence step
            self._end(name, error if gated else first_sentence(error), BAD_COLOUR, error)

    def _end(self, name: str, text: str, colour: str, detail: str = "") -> None:
        """The outcome (the full message as the tooltip); the buttons are free again."""
        self._transfer, self._outcome = None, (name, text, colour, detail or text)
        self._poll_timer.stop()
        self.progress.setVisible(False)
        self._describe()
        self.transferred.emit(name)

    def shutdown(self) -> None:
        """Stop following a transfer (the backend carries on with it)."""
        self._poll_timer.stop()
        self._transfer = None
