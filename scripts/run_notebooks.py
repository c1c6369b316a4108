"""Execute the notebooks headless with papermill (used by ``run_suite.sh``).

    python scripts/run_notebooks.py                      # every notebook on the demo set
    python scripts/run_notebooks.py -p DATASET roxford5k -p IMAGE_SIZE 1024 notebooks/01_pooling_baselines.ipynb
    python scripts/run_notebooks.py --inplace            # refresh the committed outputs

Executed copies go to ``build/notebooks/`` (or replace the originals with ``--inplace``); each
notebook writes its figures to ``figures/<notebook>/`` through its ``FIGURE_DIR`` parameter.
"""
from __future__ import annotations

import argparse
import ast
import sys
import time
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameter of the notebooks' parameters cell")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks with the executed ones")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    import papermill as pm

    notebooks = args.notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print("no notebooks found", file=sys.stderr)
        return 1
    parameters = {name: _value(value) for name, value in args.parameter}
    out_dir = REPO / "build" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for nb in notebooks:
        nb = nb.resolve()
        target = nb if args.inplace else out_dir / nb.name
        start = time.time()
        print(f"running {nb.relative_to(REPO)} ...", flush=True)
        try:
            pm.execute_notebook(str(nb), str(target), parameters=parameters, cwd=str(nb.parent),
                                kernel_name="python3", progress_bar=False, execution_timeout=args.timeout)
        except Exception as exc:  # report and go on with the other notebooks
            failed.append(nb.name)
            print(f"FAILED {nb.name}: {type(exc).__name__}: {str(exc)[:2000]}", file=sys.stderr)
            continue
        relative_papermill_paths(target)
        print(f"  done in {time.time() - start:.0f} s -> {target.relative_to(REPO)}", flush=True)
    figures = sorted((REPO / "figures").rglob("*.png")) if (REPO / "figures").exists() else []
    print(f"{len(notebooks) - len(failed)} of {len(notebooks)} notebooks ran; {len(figures)} figures in figures/")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
