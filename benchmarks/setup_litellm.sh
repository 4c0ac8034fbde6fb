#!/usr/bin/env bash
# Install LiteLLM's proxy into its own virtual environment, for the comparison row
# of benchmarks/gateway_overhead.py. It stays out of Trellis' environment on purpose:
# LiteLLM pins many packages (fastapi, pydantic, openai...) that would fight ours.
#
# The version is pinned. LiteLLM 1.82.7 and 1.82.8 on PyPI were a supply-chain
# compromise (a credential stealer, BerriAI/litellm#24518), and 1.107.0 was reported
# too; we stay on a release from well before them. Override with LITELLM_VERSION=...
set -euo pipefail

LITELLM_VERSION="${LITELLM_VERSION:-1.80.0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-litellm"
python="${PYTHON:-python3}"

case "$LITELLM_VERSION" in
    1.82.7|1.82.8|1.107.0) echo "refusing litellm $LITELLM_VERSION: a compromised release" >&2; exit 2 ;;
esac

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "litellm[proxy]==$LITELLM_VERSION"

# A compromised build shipped a .pth file that runs at every interpreter start.
if compgen -G "$venv/lib/python*/site-packages/litellm_init.pth" >/dev/null; then
    echo "found litellm_init.pth in $venv: removing the environment" >&2
    rm -rf "$venv"
    exit 3
fi

"$venv/bin/litellm" --version >/dev/null 2>&1 || "$venv/bin/python" -c "import litellm.proxy.proxy_server"
echo "litellm $LITELLM_VERSION ready: $venv/bin/litellm"
