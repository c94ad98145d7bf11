# make test: create .venv if missing, install the pinned stack, run the default test suite.
# make bench: same set-up, then the quick benchmark (make bench-full: the full sweep).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-all bench bench-full lint readme docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,openvino,executorch,coreml,parquet,ray]' timm
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n auto

test-all: $(STAMP)
	$(PY) -m pytest -q -n auto -m ""

# the main job, in minutes: the fastest way to run each family's smallest model here (litevit's --fastest
# candidates) against timm's routes at their defaults, table first; override with make bench BENCH_ARGS="..."
BENCH_ARGS ?= --quick --runtime installed --compare timm --threads 1 --seconds 0.3 --warmup 0.1
bench: $(STAMP)
	mkdir -p runs/bench && rm -f runs/bench/bench.jsonl runs/bench/bench.log
	$(VENV)/bin/litevit bench $(BENCH_ARGS) --log runs/bench/bench.log --out runs/bench/bench.jsonl \
		--markdown runs/bench/bench.md

# the full sweep: the default set (smallest of each family, LeViT-256, EfficientViT-M4, two reference CNNs), every
# runtime installed here at every precision, timm's routes, 1 thread and all cores
BENCH_FULL_ARGS ?= --runtime installed --compare timm --threads 1 all --seconds 2 --warmup 0.5
bench-full: $(STAMP)
	mkdir -p runs/bench-full && rm -f runs/bench-full/bench.jsonl runs/bench-full/bench.log
	$(VENV)/bin/litevit bench $(BENCH_FULL_ARGS) --int8-costs benchmarks/accuracy/int8_settings.jsonl \
		--log runs/bench-full/bench.log \
		--out runs/bench-full/bench.jsonl --markdown runs/bench-full/bench.md --plot runs/bench-full/bench.png

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

readme: $(STAMP)
	$(PY) tools/update_readme.py

# the site of docs/ (mkdocs, the docs extra) into site/, with the records it links (docs/_hooks/records.py);
# --strict: any link the built site cannot serve fails it (tests/test_docs.py plants one)
docs: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[docs]'
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache site
