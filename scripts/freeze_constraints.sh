#!/usr/bin/env bash
# Write constraints.txt: the exact version of every package in .venv, i.e. the versions the
# test suite and the book build were run with.  scripts/setup.sh installs with
# `pip install -c constraints.txt`, and environment.yml passes the same file to pip, so a reader
# who installs next year gets the versions that were tested, not whatever is newest.
#
#   bash scripts/freeze_constraints.sh    # after upgrading a package and re-running the tests
#
# A constraints file only pins what something else asks for; it installs nothing by itself, so
# pins of optional extras (e.g. .[bench]) are harmless when that extra is not installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
{
    echo "# Versions tested together (bash scripts/freeze_constraints.sh, $(date -u +%Y-%m-%d),"
    echo "# $($PY -c 'import sys, platform; print(f"Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}")'))."
    echo "# Used by scripts/setup.sh and environment.yml as pip constraints (-c constraints.txt)."
    # the editable rlcore itself is not pinned; torch's local label (+cpu / +cu126) is dropped so
    # that the same pin accepts the CPU or the CUDA build of that version
    "$PY" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e ' | grep -v '^rlcore' \
        | sed -E 's/^(torch[a-z]*==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
