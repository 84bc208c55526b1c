#!/usr/bin/env bash
# Make LibreOffice (headless, from Debian's packages) available: office documents (DOCX, PPTX, XLSX,
# ODT, EPUB...) are rendered to PDF so their pages have geometry for review images and boxes
# (labelloop/documents/office.py). Idempotent: does nothing when `soffice` is on PATH.
# The -nogui packages carry no X11/GTK front-end, which a headless converter never needs.
set -euo pipefail
if command -v soffice >/dev/null || command -v libreoffice >/dev/null; then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui fonts-dejavu-core >/dev/null
soffice --version
