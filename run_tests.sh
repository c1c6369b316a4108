#!/usr/bin/env bash
# The test command: sets up the environment if needed, generates the demo dataset if needed,
# runs the helpers' unit tests and executes every notebook with nbval (lax mode: only cells
# marked NBVAL_CHECK_OUTPUT are compared with their committed outputs).
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"
python data_scripts/make_demo.py
# no progress bars: a cold cache must not change the notebooks' compared outputs
export INSTRET_PROGRESS=0
python -m pytest tests notebooks --nbval-lax -q "$@"
# Each chapter's widget moved in JupyterLab in a headless Chromium (tests/browser), after nbval so the
# feature cache is warm; it skips, printing why, where no Chromium is found (.ci/run installs one).
python -m pytest tests/browser --browser -q -rs
