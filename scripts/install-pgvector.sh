#!/usr/bin/env bash
# Install the pgvector extension into the local PostgreSQL server (for the Postgres retrieval
# backend and its tests). Idempotent: does nothing when the extension is already there.
#
# Debian 12 has no postgresql-15-pgvector binary package, so when apt cannot install it this
# builds Debian's own pgvector source package (from the next Debian release, which packages
# it) against the server's headers. OPTFLAGS="" keeps the build portable (no -march=native).
set -euo pipefail

major="${PG_MAJOR:-$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n1)}"
if [[ -z "$major" ]]; then
    echo "install-pgvector: no PostgreSQL cluster found under /etc/postgresql" >&2
    exit 1
fi
if [[ -f "/usr/share/postgresql/$major/extension/vector.control" ]]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if apt-get install -y -qq "postgresql-$major-pgvector" >/dev/null 2>&1; then
    echo "install-pgvector: installed postgresql-$major-pgvector"
    exit 0
fi

# Source entries for the release after this one, using this machine's own Debian mirror.
mirror="$(grep -h -m1 -E '^URIs: .*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' || true)"
if [[ -z "$mirror" ]]; then
    mirror="$(grep -h -m1 -E '^deb .*/debian/? ' /etc/apt/sources.list 2>/dev/null \
        | awk '{print $2}' || true)"
fi
if [[ -z "$mirror" ]]; then
    echo "install-pgvector: cannot find the Debian mirror in the apt sources" >&2
    exit 1
fi
cat > /etc/apt/sources.list.d/trellis-pgvector-src.sources <<SOURCES
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt-get update -qq
apt-get install -y -qq "postgresql-server-dev-$major" dpkg-dev make gcc >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get source drops to the _apt user to download
(cd "$work" && apt-get source -qq pgvector >/dev/null)
src="$(find "$work" -maxdepth 1 -type d -name 'pgvector-*' | head -n1)"
pg_config="/usr/lib/postgresql/$major/bin/pg_config"
make -s -C "$src" -j"$(nproc)" PG_CONFIG="$pg_config" OPTFLAGS="" >/dev/null
make -s -C "$src" install PG_CONFIG="$pg_config" >/dev/null
echo "install-pgvector: built pgvector $(basename "$src" | cut -d- -f2) for PostgreSQL $major"
