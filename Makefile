# aup-milter: thin wrappers over scripts/ and the testbed package.
#   make test       install what is missing (apt, .venv), then lint, type-check and run every test
#   make demo       bring up Redis, the milter, a private Postfix and a sink under run/demo/
#   make demo-stop  stop exactly what `make demo` started
#   make bench      throughput of Postfix + aup-milter against bare Postfix (bench/)

VENV   := .venv
PYTHON := $(VENV)/bin/python

.PHONY: test bootstrap lint typecheck pytest demo demo-stop demo-down demo-status bench clean

test: bootstrap lint typecheck pytest

bootstrap:
	@bash scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check milter testbed tests bench
	$(VENV)/bin/ruff format --check milter testbed tests bench

typecheck: bootstrap
	$(VENV)/bin/mypy

pytest: bootstrap
	$(PYTHON) -m pytest

demo: bootstrap
	$(PYTHON) -m testbed demo-up

demo-stop:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m testbed demo-down; else echo "no .venv: nothing was started"; fi

demo-down: demo-stop

demo-status:
	$(PYTHON) -m testbed demo-status

bench: bootstrap
	$(PYTHON) -m bench

clean: demo-stop
	rm -rf run build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis milter/*.egg-info
