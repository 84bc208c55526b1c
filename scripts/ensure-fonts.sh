#!/usr/bin/env bash
# A CJK font from Debian (fonts-wqy-microhei) for the rendered plate tests (tests/plate_render.py).
# Idempotent: does nothing when the font is there.
set -euo pipefail
if [[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]]; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq fonts-wqy-microhei >/dev/null
