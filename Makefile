# aup-milter: thin wrappers over scripts/ and the testbed package.
#   make test       install what is missing (apt, .venv), then lint, type-check and run every test
#   make demo       bring up Redis, the milter, a private Postfix and a sink under run/demo/
#   make demo-stop  stop exactly what `make demo` started
#   make fuzz       10^5 generated bad inputs through the real parsing paths; prints the count and peak RSS
#   make bench      throughput of Postfix + aup-milter against bare Postfix and a do-nothing milter,
#                   then the milter's own capacity with 1 and 2 workers (bench/)
#   make deb        build the Debian package offline: dist/aup-milter_VERSION_all.deb
#   make test-deb   build it, install it with apt-get, exercise the installed daemon, purge it

VENV   := .venv
PYTHON := $(VENV)/bin/python

.PHONY: test bootstrap lint typecheck pytest fuzz demo demo-stop demo-down demo-status bench deb test-deb clean

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

# Header blocks, bodies, MIME structures, ARF/DSN reports, tokens and raw HTTP requests
# (tests/fuzz); `make test` runs the same targets for a few hundred cases each.
fuzz: bootstrap
	$(PYTHON) -m tests.fuzz --cases $${FUZZ_CASES:-100000}

demo: bootstrap
	$(PYTHON) -m testbed demo-up

demo-stop:
	@if [ -x $(PYTHON) ]; then $(PYTHON) -m testbed demo-down; else echo "no .venv: nothing was started"; fi

demo-down: demo-stop

demo-status:
	$(PYTHON) -m testbed demo-status

bench: bootstrap
	$(PYTHON) -m bench

deb:
	@bash scripts/build-deb.sh

# Installs the package system-wide (root only) and purges it again at the end.
test-deb: bootstrap deb
	AUP_DEB_PACKAGE="$$(ls $(CURDIR)/dist/aup-milter_*_all.deb)" $(PYTHON) -m pytest tests/packaging/test_deb.py

clean: demo-stop
	rm -rf run build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis milter/*.egg-info
