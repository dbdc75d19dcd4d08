#!/usr/bin/env bash
# WordNet 3.0 for METEOR, from Debian's packages (NLTK's own downloader needs the internet).
# Best effort: where it cannot be installed, METEOR is reported as unavailable with the reason.
set -u
if [ -f /usr/share/wordnet/data.noun ]; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no apt-get here; for METEOR install WordNet yourself (see README, Evaluation)"; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "note: installing Debian's wordnet-base needs root: sudo apt-get install wordnet-base wordnet-sense-index"; exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1; } \
    || echo "note: apt-get could not install wordnet-base wordnet-sense-index; METEOR will be reported as unavailable"
exit 0
