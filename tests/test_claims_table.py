"""The README's table of verdicts is the notebooks' own list of claims."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("claims_table", REPO / "scripts" / "claims_table.py")
claims_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(claims_table)


def test_readme_lists_exactly_the_claims_the_notebooks_print():
    assert claims_table.readme_table(REPO / "README.md") == claims_table.claims_table(), (
        "README.md's claims table differs from the notebooks: run python scripts/claims_table.py --write")


def test_claim_lines_are_read_from_stdout(tmp_path):
    import numpy as np

    from helpers.evaluate import paired_comparison

    line = paired_comparison(np.arange(10.0), np.arange(10.0) + 2, expected=+1).claim_line("Table 1: b beats a")
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": [line + "\n", "other text\n"]}]}]}
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps(nb))
    (claim, verdict, evidence), = claims_table.notebook_claims(path)
    assert claim == "Table 1: b beats a" and verdict == "reproduced" and evidence.startswith("diff=+2.00")
