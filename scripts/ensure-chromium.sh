#!/usr/bin/env bash
# Make Debian's Chromium available for the browser test (tests/test_review_browser.py).
# Idempotent: does nothing when /usr/bin/chromium exists. Playwright is pointed at this binary
# (executable_path) instead of `playwright install`, which would download a browser build of its own.
set -euo pipefail
if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
