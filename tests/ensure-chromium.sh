#!/usr/bin/env bash
# Makes sure the console's browser test (tests/e2e/tests/console.rs) has a browser: Debian's
# chromium and chromium-driver, installed from Debian's packages when missing and we are root.
# Never skips: without them the test would fail, so this fails first, saying what to install.
set -euo pipefail
log() { echo "ensure-chromium: $*" >&2; }
have() { command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; }; }
if have; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "installing chromium and chromium-driver from Debian's packages (the console's browser test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
fi
have || { log "FATAL: chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver; or set CHROMIUM and CHROMEDRIVER)"; exit 1; }
