#!/usr/bin/env bash
# WordNet 3.0 for METEOR, from Debian's packages (NLTK's own downloader needs the internet).
# Best effort for users: where it cannot be installed, METEOR is reported as unavailable with
# the reason. In CI (CI=true) that is a failure, so no METEOR check can vanish silently.
set -u
fail() {
    echo "$1"
    case "${CI:-}" in 1|true|TRUE|True|yes) echo "error: CI needs WordNet for METEOR"; exit 1;; esac
    exit 0
}
if [ -f /usr/share/wordnet/data.noun ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "note: no apt-get here; for METEOR install WordNet yourself (see README, Evaluation)"
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        fail "note: installing Debian's wordnet-base needs root: sudo apt-get install wordnet-base wordnet-sense-index"
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1; } \
    || fail "note: apt-get could not install wordnet-base wordnet-sense-index; METEOR will be reported as unavailable"
exit 0
