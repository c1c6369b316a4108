#!/usr/bin/env bash
# The run command: sets up the environment if needed, generates the demo dataset if needed and
# executes every notebook on it (executed copies in build/notebooks/, figures in figures/). It prints
# one line per notebook (seconds, figures written, OK or FAILED) and a total; the full output of each
# run, the kernel's warnings included, goes to build/logs/<notebook>.log.
# Extra arguments go to scripts/run_notebooks.py, e.g.  -p DATASET roxford5k  or  --inplace.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"
python data_scripts/make_demo.py
python scripts/run_notebooks.py "$@"
