#!/usr/bin/env bash
# Debian's Chromium for the browser tests (driven by Playwright; never `playwright install`).
# Idempotent: installs only when /usr/bin/chromium is missing. Needs root (or sudo).
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    SUDO=sudo
  else
    echo "chromium is missing and this is not root: run 'apt-get install -y chromium' as root" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "installing Debian's chromium for the browser tests"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
