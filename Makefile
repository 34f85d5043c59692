# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint typecheck protos bench clean system-deps

$(STAMP): pyproject.toml setup.py scripts/gen_protos.py $(wildcard protos/*/*/*.proto)
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'grpcio-tools>=1.66,<1.82' 'protobuf>=5.28,<7'
	$(BIN)/python scripts/gen_protos.py .
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py .

demo: $(STAMP)
	$(BIN)/bkv demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not chaos and not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not chaos"

lint: $(STAMP)
	$(BIN)/ruff check bkv_protocol vault_node chatd_proxy client_sdk tests scripts
	$(BIN)/mypy bkv_protocol vault_node chatd_proxy client_sdk

bench: $(STAMP)
	$(BIN)/bkv bench opaque
	$(BIN)/bkv bench files
	$(BIN)/bkv bench vault

clean:
	rm -rf $(VENV) bkv_api build *.egg-info .pytest_cache .mypy_cache .ruff_cache
