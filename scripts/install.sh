#!/usr/bin/env bash
# Install ctsynth into ./.venv on a CPU machine: torch's CPU wheel first, then the package pinned against it.
#   bash scripts/install.sh          the package
#   bash scripts/install.sh --test   the package, test extras, and the Debian tools the tests call
#                                    (dcm2niix, dcmtk, chromium; needs root or sudo, skipped with a warning otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
    missing=()
    for tool in dcm2niix chromium; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
    if [ ${#missing[@]} -gt 0 ]; then
        sudo_cmd=""
        [ "$(id -u)" = 0 ] || sudo_cmd="sudo -n"
        if $sudo_cmd true 2>/dev/null; then
            $sudo_cmd apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq dcm2niix dcmtk chromium >/dev/null
        else
            echo "warning: cannot install ${missing[*]} (no root); the tests that need them will skip" >&2
        fi
    fi
else
    .venv/bin/python -m pip install --quiet -c constraints.txt -e .
fi
