#!/usr/bin/env bash
# Install llama-cpp-python (the local model's previous engine) into its own virtual
# environment, for the comparison row of benchmarks/local_engine.py. It compiles llama.cpp
# from source (~5-13 min on 2 cores, needs a C++ compiler and cmake), which is why it is no
# longer part of Trellis' `local` extra. Override the version with LLAMA_CPP_PYTHON_SPEC="==0.3.16".
set -euo pipefail

spec="${LLAMA_CPP_PYTHON_SPEC:->=0.3.7,<0.4}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-llamacpp-python"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install "llama-cpp-python$spec"
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ready:', '$venv/bin/python')"
