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

.PHONY: demo test test-deploy install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

# The suite as an install without the train extra sees it: torch made unimportable in every process
# (tests/no_torch/sitecustomize.py); the deploy-side tests must pass and the torch-side ones skip.
test-deploy: $(VENV)/.installed
	PYTHONPATH=tests/no_torch $(PY) -m pytest -q -p no:cacheprovider

# The study on the shipped Fashion-MNIST generator: 32 and 8..3 bits, 10,000 + 10,000 images, figures, index.html.
demo: $(VENV)/.installed
	$(GANQ) sweep zoo:fashion-mnist-cnn3 --out report/demo

clean:
	rm -rf report/demo .pytest_cache
