#!/usr/bin/env bash
# Sourced by run_suite.sh and run_tests.sh: creates (once) the virtual environment with the exact
# pins of requirements.lock and puts it first on PATH. The environment lives outside the clone,
# keyed by the lock file's hash, so every clone and every CI run on a machine shares it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BIN="${PYTHON:-python3}"
if ! "$PYTHON_BIN" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (found $("$PYTHON_BIN" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
LOCK_HASH="$(cat "$REPO/requirements.lock" | sha256sum | cut -c1-12)"
VENV="${INSTRET_VENV:-$HOME/.cache/instret/venv-$LOCK_HASH}"
if [ ! -f "$VENV/.complete" ]; then
  echo "setting up the environment in $VENV (once; several minutes: torch is large)"
  rm -rf "$VENV"
  "$PYTHON_BIN" -m venv "$VENV"
  if ! "$VENV/bin/python" -m pip install --quiet -r "$REPO/requirements.lock" > "$VENV.install.log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$VENV.install.log" | tail -40 >&2
    echo "error: installing requirements.lock failed (full log: $VENV.install.log)" >&2
    exit 1
  fi
  touch "$VENV/.complete"
fi
export PATH="$VENV/bin:$PATH"
# The project is used from this clone (not installed into the shared environment).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
