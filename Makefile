# The README's two set-up commands: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
GANQ := $(VENV)/bin/ganq
# Real-data tests and the demo look for data sets here when ../shared/data exists (this project's machines);
# elsewhere ganq looks in ~/.cache/ganq/datasets and /usr/share/datasets, or downloads with --download.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin GANQ_DATA),undefined)
ifneq ($(wildcard $(SHARED_DATA)),)
export GANQ_DATA := $(SHARED_DATA)
endif
endif

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(VENV)/.installed
	$(GANQ) train --dataset fashion-mnist --arch cnn3 --epochs 1 --limit 6000 --out runs/demo --force
	$(GANQ) export runs/demo --out runs/demo/generator.onnx
	$(GANQ) quantize runs/demo/generator.onnx --bits 4 --format packed --out runs/demo/generator-4bit.onnx
	@echo "sample grid: runs/demo/samples/epoch-001.png"

clean:
	rm -rf runs/demo .pytest_cache
