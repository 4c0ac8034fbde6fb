#!/usr/bin/env bash
# Install LangGraph and its SQLite checkpointer into their own virtual environment, for the
# comparison rows of benchmarks/workflow_overhead.py. LangGraph is not a Trellis dependency:
# it stays out of Trellis' environment, and the benchmark runs it as a subprocess
# (benchmarks/langgraph_side.py) under this venv's interpreter.
#
# Versions are pinned so figures compare like with like; override with LANGGRAPH_VERSION=...
# and LANGGRAPH_SQLITE_VERSION=...
set -euo pipefail

LANGGRAPH_VERSION="${LANGGRAPH_VERSION:-1.2.22}"
LANGGRAPH_SQLITE_VERSION="${LANGGRAPH_SQLITE_VERSION:-3.1.2}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-langgraph"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q \
    "langgraph==$LANGGRAPH_VERSION" \
    "langgraph-checkpoint-sqlite==$LANGGRAPH_SQLITE_VERSION"

"$venv/bin/python" -c "import langgraph.checkpoint.sqlite.aio, langgraph.graph"
echo "langgraph $LANGGRAPH_VERSION (checkpoint-sqlite $LANGGRAPH_SQLITE_VERSION) ready: $venv/bin/python"
