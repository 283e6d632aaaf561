# Two commands on a fresh machine with Python 3.11 and pip: `make demo` and `make test`.
# Both create .venv when missing and install the package; re-running installs nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
QUICK ?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup lint test test-fast demo bench clean browser

setup: $(STAMP)

# The HTML view's tests drive a real headless Chromium: Debian's package, installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,demo]'
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps rliable==1.2.0
	touch $(STAMP)

# The linter and the type checker (configured in pyproject.toml) on the four packages, before the tests.
LINTED := tokenizer_kit schemas converters trainer
lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m mypy $(LINTED)

test: $(STAMP) browser lint
	$(PY) -m pytest -q -ra

test-fast: $(STAMP) browser lint
	$(PY) -m pytest -q -ra -m "not slow"

demo: $(STAMP)
	$(PY) scripts/demo.py

# The peers bench_peers.py measures side by side, without their torchvision dependency: PyPI's
# torchvision is a CUDA build that fails beside the CPU torch wheel (their light deps: [bench]).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[bench]'
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps litdata==0.2.76 mosaicml-streaming==0.13.0
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run_all $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache .mypy_cache .ruff_cache test-artifacts
