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

.PHONY: setup demo test test-backend bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: backend/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e "backend[test]"
	touch $@

demo: setup
	mkdir -p $(OUT)
	$(BIN)/rsov segment "$(DEMO_RASTER)" --classes "$(DEMO_CLASSES)" --model $(RSOV_MODEL) \
		--out $(OUT)/demo.gpkg --raster-out $(OUT)/demo_classes.tif --preview $(OUT)/demo.png

test: test-backend

test-backend: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
