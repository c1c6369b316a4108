"""scripts/run_notebooks.py: one line per notebook and a total, the kernel's noise in the log."""
import importlib.util
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
sys.modules["run_notebooks"] = run_notebooks
spec.loader.exec_module(run_notebooks)


def _notebook(path: Path, figure_dir: Path, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(f"FIGURE_DIR = {str(figure_dir)!r}", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))


def test_one_line_per_notebook_and_the_noise_in_the_log(tmp_path, capfd):
    figures = tmp_path / "figures"
    good, bad = tmp_path / "01_good.ipynb", tmp_path / "02_bad.ipynb"
    _notebook(good, figures / "01_good", (
        "import os\nfrom pathlib import Path\n"
        "os.write(2, b'[IPKernelApp] WARNING | Kernel is running over TCP (from the test)\\n')\n"
        "Path(FIGURE_DIR).mkdir(parents=True, exist_ok=True)\n"
        "for name in ('a.png', 'b.png'):\n    (Path(FIGURE_DIR) / name).write_bytes(b'png')\n"))
    _notebook(bad, figures / "02_bad", "raise ValueError('boom in the cell')")
    logs = tmp_path / "logs"
    failed = run_notebooks.run_notebooks([good, bad], {}, timeout=120, out_dir=tmp_path / "out", log_dir=logs,
                                         figures_root=figures)
    assert failed == ["02_bad.ipynb"]
    captured = capfd.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3, captured.out
    assert re.fullmatch(r"01_good +\d+ s +2 figures  OK", lines[0])
    assert re.fullmatch(r"02_bad +\d+ s +0 figures  FAILED  ValueError: boom in the cell \(log: .*02_bad\.log\)",
                        lines[1])
    assert re.fullmatch(r"total +\d+ s +2 figures  1 of 2 OK \(figures in .*, logs in .*\)", lines[2])
    assert "Kernel is running over TCP" not in captured.out + captured.err
    assert "Kernel is running over TCP" in (logs / "01_good.log").read_text()
    assert "boom in the cell" in (logs / "02_bad.log").read_text()
    assert (tmp_path / "out" / "01_good.ipynb").is_file()


def test_missing_notebook_is_a_clear_error(tmp_path, capsys):
    assert run_notebooks.main([str(tmp_path / "nope.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_failure_reason_is_one_short_line():
    class CellError(Exception):
        ename, evalue = "KeyError", "'x'\nsecond line"

    assert run_notebooks.failure_reason(CellError()) == "KeyError: 'x' second line"
    assert len(run_notebooks.failure_reason(RuntimeError("y" * 500))) == 160
