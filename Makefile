# make test: create .venv if missing, install the pinned stack, run the default test suite.
# make bench: same set-up, then run the benchmark on its default model set.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-all bench lint readme docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,openvino,executorch,coreml]' timm
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto -m ""

# the default set, every runtime installed here, timm's routes, 1 thread and all cores; override with
# make bench BENCH_ARGS="levit_128s --runtime eager"
BENCH_ARGS ?= --runtime installed --compare timm --threads 1 all --seconds 2 --warmup 0.5
bench: $(STAMP)
	mkdir -p runs/bench && rm -f runs/bench/bench.jsonl
	$(VENV)/bin/litevit bench $(BENCH_ARGS) --int8-costs benchmarks/int8_settings.jsonl \
		--out runs/bench/bench.jsonl --markdown runs/bench/bench.md --plot runs/bench/bench.png

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

readme: $(STAMP)
	$(PY) tools/update_readme.py

# the site of docs/ (mkdocs, the docs extra) into site/; tests/test_docs.py checks every link of README and docs/
docs: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[docs]'
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache site
