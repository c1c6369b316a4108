#!/usr/bin/env bash
# The run command: sets up the environment if needed, generates the demo dataset if needed and
# executes every notebook on it (executed copies in build/notebooks/, figures in figures/).
# Extra arguments go to scripts/run_notebooks.py, e.g.  -p DATASET roxford5k  or  --inplace.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"
python data_scripts/make_demo.py
python scripts/run_notebooks.py "$@"
