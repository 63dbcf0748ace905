#!/usr/bin/env bash
# Headless Chromium and its WebDriver from Debian's packages, for the web page's browser test
# (tests/server/test_server_page.py, which skips without them). Nothing is downloaded outside apt.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
