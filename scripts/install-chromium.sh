#!/usr/bin/env bash
# Install Debian's chromium, the browser the web UI's tests drive through Playwright
# (tests/ui; executable_path=/usr/bin/chromium, no browser download). Idempotent.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "install-chromium: installed chromium"
