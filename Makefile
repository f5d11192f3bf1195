# rsov: every set-up step lives here, so a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision must be a matched pair (see README); override for another CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
SHARED ?= ../shared
DEMO_RASTER ?= $(SHARED)/data/openearthmap/oem_koeln_50.tif
DEMO_CLASSES ?= building,roof,house; tree,forest; grass; road; water,river; bareland,barren; pavement; cropland
RSOV_MODEL ?= ViT-B-16-openai
OUT ?= out
# The QGIS plugin is tested in QGIS's own Python (apt's python3-qgis; see .ci/run).
QGIS_PYTHON ?= /usr/bin/python3
QVENV := .qgis-venv
QBIN := $(QVENV)/bin
PLUGIN_ZIP := dist/rsov_qgis.zip

.PHONY: setup demo test test-backend bench clean setup-qgis test-plugin package check-package icon api-schema lint

# The backend environment (.venv, with .venv/bin/rsov) and the plugin-test environment (.qgis-venv).
setup: $(VENV)/.installed setup-qgis

$(VENV)/.installed: backend/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e "backend[test,eval,sam3]"
	touch $@

demo: $(VENV)/.installed
	mkdir -p $(OUT)
	$(BIN)/rsov segment "$(DEMO_RASTER)" --classes "$(DEMO_CLASSES)" --model $(RSOV_MODEL) \
		--out $(OUT)/demo.gpkg --raster-out $(OUT)/demo_classes.tif --preview $(OUT)/demo.png

test: test-backend test-plugin

test-backend: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests --ignore=tests/plugin

# ruff (lint and format: the whole checkout) and mypy (backend/rsov and rsov_qgis), configured in pyproject.toml;
# both pinned, installed into .venv when missing or of another version.
RUFF_VERSION := 0.17.6
MYPY_VERSION := 2.4.1
lint: $(VENV)/.installed
	@$(BIN)/ruff --version 2>/dev/null | grep -qx "ruff $(RUFF_VERSION)" \
		&& $(BIN)/mypy --version 2>/dev/null | grep -q "^mypy $(MYPY_VERSION) " \
		|| $(BIN)/pip install --quiet "ruff==$(RUFF_VERSION)" "mypy==$(MYPY_VERSION)"
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# The HTTP contract the plugin and the backend share (tests/test_api_schema.py compares it with the served one).
api-schema: $(VENV)/.installed
	$(BIN)/rsov api-schema --out docs/api/openapi.json

# --- QGIS plugin ---------------------------------------------------------------------------
setup-qgis: $(QVENV)/.installed

# Debian's QGIS (python3-qgis for /usr/bin/python3, the desktop binary, Xvfb), installed when missing.
QGIS_APT := python3-qgis qgis-providers qgis xvfb xauth
$(QVENV)/.installed:
	@if ! $(QGIS_PYTHON) -c "import qgis.core" 2>/dev/null || ! command -v qgis >/dev/null || ! command -v xvfb-run >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(QGIS_APT); \
		else echo "QGIS is missing: run as root, or: sudo apt-get install $(QGIS_APT)"; exit 1; fi; \
	fi
	test -x $(QBIN)/python || $(QGIS_PYTHON) -m venv --system-site-packages $(QVENV)
	$(QBIN)/pip install --quiet pytest pytest-qgis pytest-qt bandit jsonschema
	touch $@

# Unit, widget, Processing and desktop (Xvfb + the real qgis binary) tests; the end-to-end
# tests with the real backend run when .venv/bin/rsov has `serve`.
test-plugin: $(VENV)/.installed setup-qgis package
	$(QBIN)/python -m pytest -q tests/plugin

# dist/rsov_qgis.zip: one folder rsov_qgis/ with the code, metadata.txt, LICENSE, README.md, resources and
# the backend's source (rsov_qgis/backend/, what the installer installs): source and package data
# only, no build outputs or binaries (plugins.qgis.org rejects those).
PACKAGE_BACKEND := build/plugin/rsov_qgis/backend
package:
	rm -rf build/plugin $(PLUGIN_ZIP)
	mkdir -p build/plugin dist
	cp -r rsov_qgis build/plugin/rsov_qgis
	cp -r resources metadata.txt LICENSE README.md build/plugin/rsov_qgis/
	mkdir $(PACKAGE_BACKEND)
	cp backend/pyproject.toml backend/README.md $(PACKAGE_BACKEND)/
	cp -r backend/rsov $(PACKAGE_BACKEND)/rsov
	find build/plugin -name __pycache__ -prune -exec rm -rf {} +
	find $(PACKAGE_BACKEND)/rsov -type f ! -name "*.py" ! -name "*.json" ! -name "*.txt" -delete
	find build/plugin -name "*.pyc" -delete
	cd build/plugin && $(PYTHON) -m zipfile -c ../../$(PLUGIN_ZIP) rsov_qgis
	@echo "$(PLUGIN_ZIP): install it with Plugins > Manage and Install Plugins > Install from ZIP"

# plugins.qgis.org blocks Bandit findings; we allow none, of any severity.
check-package: package setup-qgis
	$(QBIN)/bandit -q -r build/plugin/rsov_qgis

# resources/icon.png is rendered from the hand-drawn resources/icon.svg.
icon:
	QT_QPA_PLATFORM=offscreen $(QGIS_PYTHON) -c "from qgis.PyQt.QtWidgets import QApplication; \
	from qgis.PyQt.QtSvg import QSvgRenderer; from qgis.PyQt.QtGui import QImage, QPainter; \
	app = QApplication([]); image = QImage(64, 64, QImage.Format.Format_ARGB32); image.fill(0); \
	painter = QPainter(image); painter.setRenderHint(QPainter.RenderHint.Antialiasing); \
	QSvgRenderer('resources/icon.svg').render(painter); painter.end(); image.save('resources/icon.png')"

bench: $(VENV)/.installed
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) $(QVENV) $(OUT) .pytest_cache build dist tests/plugin/.qgis-settings
