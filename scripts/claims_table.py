"""The README's table of paper claims and their verdicts, collected from the executed notebooks.

Every chapter prints each claim it tests as one line made by
:meth:`helpers.evaluate.PairedComparison.claim_line`::

    <claim>: reproduced (diff=+2.10, 95% CI [+0.40, +3.90], p=0.012, 70 queries, 14 instances)

This script reads those lines from the committed notebooks' outputs and writes them as a markdown
table between the ``<!-- claims:begin -->`` and ``<!-- claims:end -->`` markers of README.md, so
the README says exactly what the notebooks say. ``tests/test_claims_table.py`` checks that it does.

    python scripts/claims_table.py            # print the table
    python scripts/claims_table.py --write    # rewrite the README's table
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
CLAIM = re.compile(r"^(?P<claim>\S.*?): (?P<verdict>reproduced|contradicted|not separable on this data) "
                   r"\((?P<evidence>(?:diff|rho)=[^()]*)\)\s*$")


def notebook_claims(path: Path) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for every claim line in the stream outputs of a notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream" or output.get("name") != "stdout":
                continue
            text = "".join(output.get("text", []))
            for line in text.splitlines():
                match = CLAIM.match(line)
                if match:
                    found.append((match["claim"], match["verdict"], match["evidence"]))
    return found


def claims_table(notebooks=None) -> str:
    notebooks = notebooks or sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    rows = ["| chapter | claim | verdict on the demo | evidence (per-query AP, paired bootstrap) |",
            "|---|---|---|---|"]
    for path in notebooks:
        for claim, verdict, evidence in notebook_claims(path):
            rows.append(f"| {path.stem[:2]} | {claim.replace('|', '/')} | {verdict} | {evidence} |")
    return "\n".join(rows)


def readme_table(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args(argv)
    table = claims_table()
    if not args.write:
        print(table)
        return 0
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")
    print(f"wrote {table.count(chr(10)) - 1} claims into {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
