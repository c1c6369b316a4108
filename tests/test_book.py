"""scripts/book.py: the navigation cells, the README's contents table and the static HTML book."""
import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("book", REPO / "scripts" / "book.py")
book = importlib.util.module_from_spec(spec)
sys.modules["book"] = book  # dataclasses look their module up while the file executes
spec.loader.exec_module(book)

README = """# Title

Intro.

<!-- contents:begin -->
| old | table |
<!-- contents:end -->

## Other section

kept as it is
"""


def test_repository_navigation_and_readme_are_up_to_date():
    problems = book.navigation(book.Book(), write=False)
    assert not problems, "stale (run: python scripts/book.py navigation --write):\n" + "\n".join(problems)


def _notebook(title: str, headings: list[str]):
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("x = 1\nprint(x)", metadata={"tags": ["parameters"]})
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    code.execution_count = 1
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat this chapter does."), code]
    for i, heading in enumerate(headings):
        nb.cells.append(nbformat.v4.new_markdown_cell(f"Some text.\n\n## {heading}\n\nMore text."))
        nb.cells.append(nbformat.v4.new_code_cell(f"y = {i}"))
    nb.cells.append(nbformat.v4.new_markdown_cell("```\n## not a heading (code)\n```"))
    return nb


CHAPTERS = (
    book.Chapter("00_start.ipynb", "Start: the set-up", "where it begins"),
    book.Chapter("01_more.ipynb", "More: the method", "what follows"),
    book.Chapter("02_later.ipynb", "Later: not written", "what comes last"),
)


@pytest.fixture
def small_book(tmp_path):
    """Two synthetic chapters of three (the third missing), a glossary and a README with markers."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nbformat.write(_notebook("00 · Start", ["1. Plain heading (Fig. 1)", "2. Data — the set"]), str(nbs / "00_start.ipynb"))
    nbformat.write(_notebook("01 · More", ["1. The score $s$", "2. What's left?"]), str(nbs / "01_more.ipynb"))
    (nbs / "glossary.md").write_text("# Glossary\n\n### junk\n\nIgnored images; see [More](01_more.ipynb).\n")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return book.Book(chapters=CHAPTERS, notebooks=nbs, readme=readme)


def _cells(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def test_check_names_what_is_stale_and_the_missing_chapter(small_book):
    problems = book.navigation(small_book, write=False)
    text = "\n".join(problems)
    assert "02_later.ipynb" in text and "does not exist" in text
    assert "00_start.ipynb: no 'contents' cell; no 'navigation-top' cell; no 'navigation-bottom' cell" in text
    assert "README.md: the contents table is out of date" in text
    assert book.main(["navigation", "--check"], book=small_book) == 1


def test_write_places_owned_cells_and_touches_nothing_else(small_book, capsys):
    first = small_book.notebooks / "00_start.ipynb"
    before = _cells(first)
    assert book.main(["navigation", "--write"], book=small_book) == 0
    assert "02_later.ipynb" in capsys.readouterr().err  # the missing chapter is a warning, not a crash
    after = _cells(first)
    assert [_tags(c) for c in after[1:3]] == [["contents"], ["navigation-top"]]
    assert _tags(after[-1]) == ["navigation-bottom"]
    assert [c for c in after if not set(_tags(c)) & set(book.OWNED_TAGS)] == before
    # the file is exactly what nbformat writes (the formatting papermill and JupyterLab use)
    assert first.read_text(encoding="utf-8") == nbformat.writes(nbformat.read(str(first), as_version=4)) + "\n"
    assert book.navigation(small_book, write=False) == [
        f"{small_book.notebooks / '02_later.ipynb'}: chapter 02 is in the chapter list but its notebook does not exist"]


def test_write_is_idempotent(small_book):
    book.navigation(small_book, write=True)
    files = sorted(small_book.notebooks.glob("*.ipynb")) + [small_book.readme]
    contents = [p.read_bytes() for p in files]
    book.navigation(small_book, write=True)
    assert [p.read_bytes() for p in files] == contents
    for path in small_book.notebooks.glob("*.ipynb"):
        tags = [t for c in _cells(path) for t in _tags(c)]
        assert tags.count("navigation-top") == 1 and tags.count("navigation-bottom") == 1


def test_navigation_text(small_book):
    book.navigation(small_book, write=True)
    cells = _cells(small_book.notebooks / "01_more.ipynb")
    top = "".join(cells[1]["source"])
    assert top.startswith("**Chapter 1 of 3** · [Contents](00_start.ipynb#cell-id=book-contents) · [Glossary](glossary.md)")
    assert "previous: [00 · Start](00_start.ipynb)" in top
    assert "next: 02 · Later (not written yet)" in top
    contents = "".join(_cells(small_book.notebooks / "00_start.ipynb")[1]["source"])
    assert contents.startswith("## Contents")
    assert "not a heading" not in contents
    # every section is linked by its cell's id (what JupyterLab 4 resolves in a notebook not yet open)
    for name in ("00_start.ipynb", "01_more.ipynb"):
        nb = nbformat.read(str(small_book.notebooks / name), as_version=4)
        headed = [c for c in nb.cells if c.cell_type == "markdown" and "\n## " in "\n" + c.source
                  and "contents" not in c.metadata.get("tags", []) and "```" not in c.source]
        assert len(headed) == 2
        for cell in headed:
            heading = next(line[3:] for line in cell.source.splitlines() if line.startswith("## "))
            assert f"  - [{heading}]({name}#cell-id={cell.id})" in contents
    assert [c["id"] for c in _cells(small_book.notebooks / "00_start.ipynb") if _tags(c)[:1] != ["parameters"]
            and set(_tags(c)) & set(book.OWNED_TAGS)] == ["book-contents", "book-navigation-top",
                                                          "book-navigation-bottom"]
    readme = small_book.readme.read_text()
    assert "| [00 · Start: the set-up](notebooks/00_start.ipynb) | where it begins |" in readme
    assert "| 02 · Later: not written (not written yet) | what comes last |" in readme
    assert readme.endswith("## Other section\n\nkept as it is\n") and "| old | table |" not in readme


def test_stale_cells_are_named_and_replaced(small_book):
    book.navigation(small_book, write=True)
    path = small_book.notebooks / "01_more.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].source = "edited by hand"
    nb.cells.insert(4, nbformat.v4.new_markdown_cell("another", metadata={"tags": ["navigation-top"]}))
    nb.cells[3].source = nb.cells[3].source.replace("## 1. The score $s$", "## 1. The renamed score")
    tagged_code = nbformat.v4.new_code_cell("z = 2", metadata={"tags": ["navigation-bottom"]})
    nb.cells.insert(2, tagged_code)
    nbformat.write(nb, str(path))
    problems = "\n".join(book.navigation(small_book, write=False))
    assert "01_more.ipynb: a second 'navigation-top' cell (removed); the 'navigation-top' cell is out of date" in problems
    assert "00_start.ipynb: the 'contents' cell is out of date" in problems  # a heading of 01 changed
    book.navigation(small_book, write=True)
    cells = _cells(path)
    assert sum("navigation-top" in _tags(c) for c in cells) == 1
    assert any(c["cell_type"] == "code" and "".join(c["source"]) == "z = 2" for c in cells)  # a code cell is never owned
    assert "1. The renamed score" in "".join(_cells(small_book.notebooks / "00_start.ipynb")[1]["source"])


def test_moved_cell_is_put_back(small_book):
    book.navigation(small_book, write=True)
    path = small_book.notebooks / "01_more.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nb.cells.pop(1))  # navigation-top at the end
    nbformat.write(nb, str(path))
    assert book.navigation(small_book, write=False)[-1].endswith("the navigation cells are not in their places")
    book.navigation(small_book, write=True)
    assert _tags(_cells(path)[1]) == ["navigation-top"]


def test_readme_without_markers_is_a_clear_error(small_book, capsys):
    small_book.readme.write_text("# no markers\n")
    assert book.main(["navigation", "--check"], book=small_book) == 2
    assert "needs exactly one <!-- contents:begin -->" in capsys.readouterr().err


def test_rewrite_links_points_book_files_at_pages(small_book):
    text = ("[a](00_start.ipynb#cell-id=book-contents) [b](01_more.ipynb#x-(y)) [c](glossary.md#junk) [d](01_more.ipynb) "
            "[e](../helpers/evaluate.py) [f](https://example.org/01_more.ipynb) <a href=\"glossary.md\">g</a>")
    assert book.rewrite_links(text, small_book) == (
        "[a](index.html) [b](01_more.html#x-(y)) [c](glossary.html#junk) [d](01_more.html) "
        "[e](../helpers/evaluate.py) [f](https://example.org/01_more.ipynb) <a href=\"glossary.html\">g</a>")


def test_html_book_links_all_resolve(small_book, tmp_path):
    book.navigation(small_book, write=True)
    out = tmp_path / "html"
    written = book.build_html(small_book, out)
    assert sorted(p.name for p in written) == ["00_start.html", "01_more.html", "glossary.html", "index.html"]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="01_more.html#cell-id=' in index and 'href="01_more.html"' in index
    assert 'href="index.html"' in (out / "01_more.html").read_text(encoding="utf-8")
    assert book.broken_links(out) == []
    assert book.main(["links", str(out)], book=small_book) == 0


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "a.html").write_text('<h2 id="x-%E2%80%94-y">x</h2><a href="#x-%E2%80%94-y">ok</a>'
                                     '<a href="b.html#there">ok</a><a href="b.html#nowhere">bad</a>'
                                     '<a href="c.html">bad</a><img src="data:image/png;base64,AAAA">'
                                     '<a href="https://example.org/x.html">external</a>')
    (tmp_path / "b.html").write_text('<div id="there"></div>')
    assert book.broken_links(tmp_path) == ["a.html: b.html#nowhere (no anchor #nowhere in b.html)",
                                           "a.html: c.html (no file c.html)"]
