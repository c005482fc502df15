# make demo: set up .venv and train SimCLR on the bundled data (CPU, a few minutes).
# make test: set up .venv and run every test (core and plugins).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jef-installed
PLUGINS := $(wildcard plugins/jef-plugin-*)
# torch/torchvision pinned here (pyproject.toml declares a range) so every machine gets the same build.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test docs bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]' $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

demo: install  # --overwrite: a second `make demo` moves the previous run aside to runs/demo.old-<time>
	$(VENV)/bin/jef train examples/demo.yaml --run-dir runs/demo --overwrite

# The tests are independent: pytest-xdist runs TEST_JOBS of them at once, one thread each (two workers of two
# threads on CI's two cores would compete); --dist loadfile keeps a file's tests, and its module fixtures, on one worker.
TEST_JOBS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile tests plugins

docs: install
	$(VENV)/bin/mkdocs build --strict -d site

# bench: a separate .venv-bench with lightly (a benchmark-only dependency, kept out of the test environment; the
# constraints stop it from changing torch), then the jef-vs-lightly comparison (long: see benchmarks/README.md).
BENCH := .venv-bench
$(BENCH)/.jef-installed: pyproject.toml benchmarks/requirements.txt benchmarks/constraints.txt
	$(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH)/bin/python -m pip install --quiet $(TORCH)
	$(BENCH)/bin/python -m pip install --quiet -e '.[numba]' $(foreach p,$(PLUGINS),-e $(p)) -r benchmarks/requirements.txt \
		pytest -c benchmarks/constraints.txt
	touch $@

bench: $(BENCH)/.jef-installed
	OMP_NUM_THREADS=2 $(BENCH)/bin/python benchmarks/compare_lightly.py --out compare_lightly.json

clean:
	rm -rf $(VENV) $(BENCH) runs site
