# Kettle: `make up` starts the platform in simulation mode, `make test` runs the suite
# (two pytest workers, one test file each at a time: the tests mostly wait on processes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: up test proto clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/kettle up

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Regenerate the protobuf/gRPC modules from proto/ (a test fails when they are stale).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean-venv:
	rm -rf $(VENV)
