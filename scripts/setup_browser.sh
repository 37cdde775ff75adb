#!/usr/bin/env bash
# A headless browser for the page tests (tests/serve/test_page.py): Debian's chromium, driven by the
# playwright Python package (the `dev` extra) through executable_path. `playwright install` is not used:
# it downloads a browser build of its own.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    chromium --version
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "setup_browser: chromium is missing; install it with: sudo apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
chromium --version
