#!/usr/bin/env bash
# Install the WordNet 3.0 database (Debian's wordnet-base, into /usr/share/wordnet) that the
# METEOR eval metric reads through nltk. Idempotent: does nothing when it is already there.
set -euo pipefail
if [[ -f /usr/share/wordnet/data.noun ]]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq wordnet-base >/dev/null
echo "install-wordnet: installed wordnet-base"
