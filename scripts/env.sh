#!/usr/bin/env bash
# Sourced by run_suite.sh and run_tests.sh: creates (once) the virtual environment with the exact
# pins of requirements.lock and puts it first on PATH. The environment lives outside the clone,
# keyed by the Python minor version and the lock file's hash, so every clone and every CI run on a
# machine shares it, and a second Python gets its own.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUPPORTED="3.11 3.12"  # pyproject.toml: requires-python = ">=3.11,<3.13"; the pins (numpy 2.4, ipykernel 7) need 3.11

python_minor() {  # "3.11" for an interpreter, nothing when it does not run
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

supported() {
  case " $SUPPORTED " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

# PYTHON=... wins; otherwise the first supported one of python3, python3.12, python3.11.
if [ -n "${PYTHON:-}" ]; then
  PYTHON_BIN="$PYTHON"
else
  PYTHON_BIN=""
  for candidate in python3 python3.12 python3.11; do
    if command -v "$candidate" > /dev/null 2>&1 && supported "$(python_minor "$candidate")"; then
      PYTHON_BIN="$candidate"
      break
    fi
  done
  PYTHON_BIN="${PYTHON_BIN:-python3}"
fi
PY_MINOR="$(python_minor "$PYTHON_BIN")"
if ! supported "$PY_MINOR"; then
  echo "error: Python 3.11 or 3.12 is needed (${PYTHON_BIN} is ${PY_MINOR:+Python }${PY_MINOR:-not a working interpreter}); install one (apt-get install python3.11 python3.11-venv, pyenv install 3.11, or conda create -n py311 python=3.11) and rerun with PYTHON=/path/to/python3.11" >&2
  exit 2
fi
LOCK_HASH="$(sha256sum < "$REPO/requirements.lock" | cut -c1-12)"
VENV="${INSTRET_VENV:-$HOME/.cache/instret/venv-py$PY_MINOR-$LOCK_HASH}"
if [ ! -f "$VENV/.complete" ]; then
  echo "setting up the environment in $VENV with Python $PY_MINOR (once; several minutes: torch is large)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$PYTHON_BIN" -m venv "$VENV" > "$VENV.install.log" 2>&1; then
    tail -5 "$VENV.install.log" >&2
    echo "error: $PYTHON_BIN cannot create a virtual environment (on Debian/Ubuntu: apt-get install python$PY_MINOR-venv)" >&2
    exit 1
  fi
  if ! "$VENV/bin/python" -m pip install --quiet -r "$REPO/requirements.lock" >> "$VENV.install.log" 2>&1; then
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
