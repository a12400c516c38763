#!/usr/bin/env bash
# Installs redis-server (Debian's `redis-server` package) for the shared response store's tests
# (tests/test_responses.py, tests/redis_server.py). Exits 0 at once when it is already on PATH.
# Needs root (CI runs as root) and apt-get. The package's own service is neither started nor
# needed: the tests run their own redis-server on a free loopback port in a temporary directory.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-redis.sh: redis-server missing and not root; run as root or install" \
         "Debian's 'redis-server' package yourself" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-redis.sh: no apt-get here; install redis-server (or valkey-server as redis-server) yourself" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 keeps the package's maintainer scripts from starting its service (where
# invoke-rc.d is used); without an init system running nothing would start anyway.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null

command -v redis-server >/dev/null
redis-server --version | head -n 1
