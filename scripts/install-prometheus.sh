#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package) for tests/test_deploy.py.
# Exits 0 at once when both are already on PATH. Needs root (CI runs as root) and apt-get.
# The package's own service is neither started nor needed: the tests run their own prometheus
# on a free loopback port with a temporary storage directory.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-prometheus.sh: promtool/prometheus missing and not root; run as root or install" \
         "Debian's 'prometheus' package yourself" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus.sh: no apt-get here; install prometheus (with promtool) yourself" >&2
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
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

command -v promtool >/dev/null && command -v prometheus >/dev/null
prometheus --version 2>&1 | head -n 1
