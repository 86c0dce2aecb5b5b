# edgepop — every target installs what it needs first (venv, packages, generated code).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/edge/v1/*.proto)
GEN_STAMP := gen/.stamp
DATA_DIR ?= .cluster
PYTEST_ARGS ?=

.PHONY: install proto test lint cluster bench clean distclean

install: $(VENV)/.installed $(GEN_STAMP)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# generated code lives in gen/ (the proto import path); put it on the venv's path
	$(PY) -c "import sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'edgepop-gen.pth').write_text(str(pathlib.Path('gen').resolve()) + '\n')"
	touch $@

$(GEN_STAMP): $(PROTOS) $(VENV)/.installed
	# generate beside, then swap: a running process never sees a half-written package
	rm -rf gen.new && mkdir -p gen.new
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -Iproto --python_out=gen.new --grpc_python_out=gen.new --mypy_out=gen.new --mypy_grpc_out=gen.new $(PROTOS)
	touch gen.new/edge/__init__.py gen.new/edge/v1/__init__.py gen.new/edge/py.typed gen.new/.stamp
	rm -rf gen && mv gen.new gen

proto:
	rm -f $(GEN_STAMP)
	$(MAKE) $(GEN_STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

cluster: install
	$(VENV)/bin/edgectl cluster up --data-dir $(DATA_DIR) --workers workers $(CLUSTER_ARGS)

bench: install
	$(PY) -m bench

clean:
	rm -rf gen .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) $(DATA_DIR)
