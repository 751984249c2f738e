# edge-agent: set-up, demo, tests and benchmarks. `make help` lists the targets.
# Each target installs what it needs first: a .venv with the package (editable) and its
# dev extras, the compiled extension, and (for test/demo) the mosquitto broker.

PY ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYX := $(wildcard ext/*.pyx ext/*.pxd)

.PHONY: help install demo test bench model baseline clean mosquitto chromium

help:
	@echo "make install  - .venv with edge-agent (editable) + dev extras, extension built"
	@echo "make demo     - install, then run the agent on the built-in sensor emulator (Ctrl-C stops)"
	@echo "make test     - install (+ mosquitto, + chromium if it can), then the whole test suite"
	@echo "make bench    - install, then the benchmarks in benches/ (pytest-benchmark)"
	@echo "make model    - rebuild models/default.pack and models/REPORT.md (TensorFlow in .venv-build)"
	@echo "make baseline - models/BASELINE.md: a random forest on textbook features against the pack"
	@echo "make clean    - remove .venv, .venv-build and build output"

install: $(STAMP) ext

$(STAMP): pyproject.toml setup.py
	@echo "==> checking system packages (python venv, headers, compiler)"
	@PY=$(PY) scripts/ensure-system.sh python
	@echo "==> creating $(VENV) with $(PY)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> installing edge-agent (editable) with dev extras; builds the Cython extension"
	@$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# Rebuild the extension in place when a .pyx changed since the last build.
.PHONY: ext
ext: $(STAMP)
	@$(BIN)/python setup.py -q build_ext --inplace 2>&1 | grep -v -e '^$$' -e 'Compiling' -e 'setuptools' || true
	@$(BIN)/python -c "import edge_agent.native as n; n.require()" 
	@# byte-compile the tree (as pip does for an installed package): with PYTHONDONTWRITEBYTECODE
	@# set, every edge-agent command would otherwise compile ~50 modules at start (~0.1 s)
	@$(BIN)/python -m compileall -q edge_agent > /dev/null

mosquitto:
	@PY=$(PY) scripts/ensure-system.sh mosquitto

# Optional: headless Chromium for the local page's browser test (it skips without, fails under CI).
chromium:
	@PY=$(PY) scripts/ensure-system.sh chromium || echo "==> no chromium: tests/test_local_page.py's browser test will be skipped"

demo: install
	@PY=$(PY) scripts/ensure-system.sh mosquitto || echo "==> no mosquitto: the demo runs without a local broker"
	$(BIN)/edge-agent demo

test: install mosquitto chromium
	$(BIN)/python -m pytest

bench: install mosquitto
	$(BIN)/python -m pytest benches -o python_files="bench_*.py" --benchmark-only --benchmark-columns=min,median,ops,rounds --benchmark-sort=name

# Train, quantise and check models/default.pack (issue #5). TensorFlow lives only in a
# separate build venv (.venv-build, extra `build`), never in .venv; the pack is then loaded
# and self-tested by the agent's own runtime in .venv (models/check_pack.py).
BUILD_VENV := .venv-build
BUILD_STAMP := $(BUILD_VENV)/.installed-stamp

$(BUILD_STAMP): pyproject.toml setup.py
	@echo "==> creating $(BUILD_VENV) with $(PY) (TensorFlow: build time only)"
	@test -x $(BUILD_VENV)/bin/python || $(PY) -m venv $(BUILD_VENV)
	@$(BUILD_VENV)/bin/python -m pip install -q --upgrade pip
	@echo "==> installing edge-agent (editable) with the build extra into $(BUILD_VENV)"
	@$(BUILD_VENV)/bin/python -m pip install -q -e ".[build]"
	@touch $(BUILD_STAMP)

model: install $(BUILD_STAMP)
	@echo "==> building models/default.pack and models/REPORT.md (seeded; data: emulator + ../shared/data/cwru if present)"
	$(BUILD_VENV)/bin/python models/build.py --runtime-python $(BIN)/python

baseline: install $(BUILD_STAMP)
	@echo "==> models/BASELINE.md: a random forest on textbook envelope features against models/default.pack"
	$(BUILD_VENV)/bin/python models/baseline_rf.py

clean:
	rm -rf $(VENV) .venv-build build *.egg-info edge_agent/_native/*.so ext/*.c .pytest_cache .benchmarks
