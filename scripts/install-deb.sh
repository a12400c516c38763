#!/usr/bin/env bash
# Installs the Debian packages some tests need, unless the commands they run are on PATH already:
#   install-deb.sh PACKAGE[,PACKAGE...] COMMAND...
# `make prometheus`: prometheus with promtool (tests/test_deploy.py); `make redis`: redis-server
# (tests/test_responses.py, tests/redis_server.py); `make chromium`: chromium with its driver and
# a font (tests/test_ui_browser.py, driven by Playwright from PyPI with
# executable_path=/usr/bin/chromium: Playwright's own browser downloads are never used). Exits 0
# at once when every COMMAND is on
# PATH. Needs root (CI runs as root) and apt-get. The package's own service is neither started
# nor needed: the tests run their own server on a free loopback port in a temporary directory.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: install-deb.sh PACKAGE COMMAND... (e.g. install-deb.sh redis-server redis-server)" >&2
    exit 2
fi
package=$1
shift

on_path() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || return 1
    done
}

if on_path "$@"; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deb.sh: $* missing and not root; run as root or install Debian's '$package' package" \
         "yourself" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deb.sh: no apt-get here; install $package (providing $*) yourself" >&2
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
IFS=, read -r -a packages <<<"$package"
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

if ! on_path "$@"; then
    echo "install-deb.sh: installed $package, but $* are still not all on PATH" >&2
    exit 1
fi
"$1" --version 2>&1 | head -n 1
