"""The browser test's notebook copies (no browser needed: these run with the unit tests)."""
from __future__ import annotations

import json

import lab_session as lab


def _nb(*cells):
    out = []
    for c in cells:
        if isinstance(c, tuple):
            out.append({"cell_type": "code", "source": c[0], "metadata": {"tags": list(c[1])}, "outputs": [],
                        "execution_count": 3})
        elif c.startswith("#md "):
            out.append({"cell_type": "markdown", "source": c[4:], "metadata": {}})
        else:
            out.append({"cell_type": "code", "source": c, "metadata": {}, "outputs": [{"output_type": "stream"}],
                        "execution_count": 1})
    return {"cells": out, "metadata": {"widgets": {"state": {}}}, "nbformat": 4, "nbformat_minor": 5}


CHAPTER = _nb(
    "DATASET = 'demo'\nN = 3",                                   # 0
    "import numpy as np\nfrom helpers import viz",              # 1
    "table = np.zeros(N)\nprint(table)",                        # 2: nothing later reads table
    "#md the view",                                             # 3
    "def helper(i):\n    return data[i]\ndata = list(range(N))",  # 4
    "%matplotlib inline\nslow = sum(range(10**3))",             # 5: not needed
    "i = 'a loop variable elsewhere'",                          # 6: not needed: show's i is its own
    "def show(i):\n    print(helper(i))\n\nviz.interactive_view(show, i=1)",  # 7: first widget
    "viz.interactive_view(print, x=slow)",                      # 8: a second, untagged widget
)


def test_first_interactive_view_call_is_the_widget_without_tags():
    assert lab.widget_cells(CHAPTER) == [7]
    assert lab.widget_cells(_nb("from helpers.viz import interactive_view", "x = 1")) == []


def test_tags_choose_the_widget_cells():
    nb = _nb("N = 1", ("viz.interactive_view(f, n=N)", ["widget"]), "viz.interactive_view(g, n=N)",
             ("w = make()", ["widget", "other"]))
    assert lab.widget_cells(nb) == [1]
    assert lab.widget_cells(nb, every=True) == [1, 3]


def test_needed_cells_follow_the_names_the_widget_reads():
    assert lab.needed_cells(CHAPTER, [7]) == [0, 1, 4, 7]
    assert lab.needed_cells(CHAPTER, [7, 8]) == [0, 1, 4, 5, 7, 8]


def test_a_cell_that_does_not_parse_keeps_every_cell_above():
    nb = _nb("x = 1", "y = (", "viz.interactive_view(f, x=x)")
    assert lab.needed_cells(nb, [2]) == [0, 1, 2]


def test_copy_ends_at_the_widget_without_outputs(tmp_path):
    src = tmp_path / "src" / "03_x.ipynb"
    src.parent.mkdir()
    src.write_text(json.dumps(CHAPTER))
    copy, cells, n_code = lab.widget_copy(src, tmp_path / "lab")
    assert copy == tmp_path / "lab" / "notebooks" / "03_x.ipynb"
    nb = json.loads(copy.read_text())
    assert n_code == 4 and cells == [4] and len(nb["cells"]) == 5  # 4 code cells and the markdown cell
    assert "widgets" not in nb["metadata"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["metadata"]["instret_index"] for c in code] == [0, 1, 4, 7]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    full, cells, n_code = lab.widget_copy(src, tmp_path / "lab2", prefix=True)
    assert n_code == 7 and cells == [7]
