"""Execute the notebooks headless with papermill (used by ``run_suite.sh``).

    python scripts/run_notebooks.py                      # every notebook on the demo set
    python scripts/run_notebooks.py -p DATASET roxford5k -p IMAGE_SIZE 1024 notebooks/01_pooling_baselines.ipynb
    python scripts/run_notebooks.py --inplace            # refresh the committed outputs

Executed copies go to ``build/notebooks/`` (or replace the originals with ``--inplace``); each
notebook writes its figures to ``figures/<notebook>/`` through its ``FIGURE_DIR`` parameter.
Prints one line per notebook (seconds, figures written, OK or FAILED) and a total; everything the
run itself prints (papermill, the kernel's warnings, tracebacks) goes to ``build/logs/<notebook>.log``.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def relative_papermill_paths(notebook: Path) -> None:
    """papermill records the absolute input and output paths of a run in the notebook's metadata;
    keep them relative to the repository, so that a committed notebook names no path of the machine
    that ran it."""
    import json

    nb = json.loads(notebook.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("papermill", {})
    changed = False
    for key in ("input_path", "output_path"):
        value = meta.get(key)
        if value and Path(value).is_absolute():
            try:
                meta[key] = Path(value).resolve().relative_to(REPO).as_posix()
            except ValueError:  # outside the repository: keep the file name only
                meta[key] = Path(value).name
            changed = True
    if changed:
        notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def output_to(log_path: Path):
    """Send file descriptors 1 and 2 of this process, and so of the kernels it starts, to
    ``log_path`` (the kernel's own warnings are written there, not through Python), and papermill's
    log records too."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    handler = None
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            handler = logging.StreamHandler(log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            logger = logging.getLogger("papermill")
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            try:
                yield log
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                logger.removeHandler(handler)
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def figures_written(folder: Path, since: float) -> int:
    """How many files in ``folder`` (recursively) were written at or after ``since``."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since)


def failure_reason(exc: BaseException) -> str:
    """One line saying why a notebook failed: the cell's exception for a cell error."""
    name, value = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{name}: {value}" if name else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def run_notebooks(notebooks: list[Path], parameters: dict, inplace: bool = False, timeout: int = 1800,
                  out_dir: Path = REPO / "build" / "notebooks", log_dir: Path = REPO / "build" / "logs",
                  figures_root: Path = REPO / "figures", out=None) -> list[str]:
    """Execute each notebook, printing one line for it and a total line to ``out``; returns the
    names of the notebooks that failed."""
    import papermill as pm

    out = out or sys.stdout
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(len(Path(nb).stem) for nb in notebooks)
    failed, n_figures, start_all = [], 0, time.time()
    for nb in notebooks:
        nb = Path(nb).resolve()
        target = nb if inplace else out_dir / nb.name
        log_path = log_dir / f"{nb.stem}.log"
        print(f"{nb.stem:{width}s} ", end="", file=out, flush=True)
        start = time.time()
        error = None
        with output_to(log_path) as log:
            try:
                pm.execute_notebook(str(nb), str(target), parameters=parameters, cwd=str(nb.parent),
                                    kernel_name="python3", progress_bar=False, execution_timeout=timeout)
                relative_papermill_paths(target)
            except Exception as exc:  # report and go on with the other notebooks
                error = exc
                traceback.print_exc(file=log)
        seconds = time.time() - start
        figures = figures_written(figures_root / nb.stem, start - 1)
        n_figures += figures
        status = "OK" if error is None else f"FAILED  {failure_reason(error)} (log: {_shown(log_path)})"
        if error is not None:
            failed.append(nb.name)
        print(f"{seconds:6.0f} s  {figures:3d} figures  {status}", file=out, flush=True)
    total = time.time() - start_all
    print(f"{'total':{width}s} {total:6.0f} s  {n_figures:3d} figures  {len(notebooks) - len(failed)} of "
          f"{len(notebooks)} OK (figures in {_shown(figures_root)}/, logs in {_shown(log_dir)}/)", file=out, flush=True)
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter of the notebooks' parameters cell")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks with the executed ones")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    missing = [str(nb) for nb in notebooks if not nb.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    parameters = {name: _value(value) for name, value in args.parameter}
    failed = run_notebooks(notebooks, parameters, inplace=args.inplace, timeout=args.timeout)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
