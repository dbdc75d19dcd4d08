#!/usr/bin/env bash
# Debian's chromium and chromium-driver, for the web page's real-browser test (browser
# downloaders such as `playwright install` need the internet; Debian's packages come from the
# package mirror). Best effort for users: without them that one test is skipped with the
# reason. In CI (CI=true) it is a failure, so the browser test cannot vanish silently.
set -u
fail() {
    echo "$1"
    case "${CI:-}" in 1|true|TRUE|True|yes) echo "error: CI needs chromium for the browser test"; exit 1;; esac
    exit 0
}
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "note: no apt-get here; install chromium and its chromedriver for the browser test (tests/test_serve.py)"
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        fail "note: installing Debian's chromium needs root: sudo apt-get install chromium chromium-driver"
    fi
fi
echo "installing Debian's chromium and chromium-driver for the browser test (once)..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
    || fail "note: apt-get could not install chromium chromium-driver; the browser test will be skipped"
exit 0
