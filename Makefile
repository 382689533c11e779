# Lifeboat: `make run` starts all four services on localhost; `make test` runs the tests.
# Every target installs what it needs (venv, generated code) itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/lifeboat/v1/*.proto)
GENERATED := lifeboat/v1/.generated
PYTEST_ARGS ?=

.PHONY: all venv generate run test lint typecheck check bench clean

all: generate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	bash tests/support/link-ceph-modules $(BIN)/python
	touch $@

venv: $(VENV)/.installed

# Generated code is not committed: it is produced here from protos/.
$(GENERATED): $(PROTOS) $(VENV)/.installed
	rm -f lifeboat/v1/*_pb2*.py lifeboat/v1/*_pb2*.pyi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -I protos \
	    --python_out=. --grpc_python_out=. --mypy_out=quiet:. --mypy_grpc_out=quiet:. $(PROTOS)
	touch $@

generate: $(GENERATED)

run: generate
	$(BIN)/python -m lifeboat.devrun

# The README's test command: protos, lint and types first, then every test.
test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

lint: generate
	cd protos && ../$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: generate
	$(BIN)/mypy

check: lint typecheck test

bench: generate
	$(BIN)/python -m bench.run $(BENCH)

clean:
	rm -rf $(VENV) var lifeboat/v1/*_pb2*.py lifeboat/v1/*_pb2*.pyi $(GENERATED)
