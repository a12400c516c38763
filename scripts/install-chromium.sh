#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium (`chromium`, with `chromium-driver`) for the page's
# browser tests (tests/test_ui_browser.py, driven by Playwright from PyPI with
# executable_path=/usr/bin/chromium: Playwright's own browser downloads are never used). Exits 0
# at once when chromium is already there. Needs root (CI runs as root) and apt-get.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-chromium.sh: chromium missing and not root; run as root or install" \
         "Debian's 'chromium' package yourself" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium.sh: no apt-get here; install chromium yourself (the tests look for /usr/bin/chromium" \
         "or MTPROXY_CHROMIUM)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null

command -v chromium >/dev/null
chromium --version | head -n 1
