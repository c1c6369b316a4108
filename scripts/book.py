"""The suite as a book: reading order, navigation cells, README contents and a static HTML book.

The chapter list below is the one place that names the chapters, their order, titles and one-line
descriptions; the sections of each chapter are read from its notebook's ``## `` headings.

    python scripts/book.py navigation --check   # exit 1 and name what is stale (notebooks, README)
    python scripts/book.py navigation --write   # rewrite the navigation cells and the README table
    python scripts/book.py html                 # executed notebooks -> build/html/ (index.html first)
    python scripts/book.py links build/html     # every local link resolves to a file and an anchor

Navigation writes only markdown cells it owns, recognised by a cell tag: ``contents`` (chapter 00,
right after the title), ``navigation-top`` (right after the title) and ``navigation-bottom`` (the
last cell). Code cells, outputs and every other cell are left exactly as they are, and a notebook
whose owned cells are already right is not rewritten.

Section links are ``<notebook>#cell-id=<id of the heading's cell>``. JupyterLab 4 resolves that form
from the notebook's model, so it reaches a section of a notebook that is not open yet (its cells are
rendered lazily), and nbconvert writes ``cell-id=<id>`` as the id of each cell's ``div``. Heading-text
anchors (JupyterLab's ``data-jupyter-id``, the text with spaces as ``-``) do not: JupyterLab looks
them up among rendered cells only, compares them without percent-decoding (so ``—`` never
matches), and nbconvert percent-encodes non-ASCII characters in its ids. The owned cells have the
fixed ids ``book-<tag>``, so ``#cell-id=book-contents`` is the contents.
"""
from __future__ import annotations

import argparse
import html
import re
import sys
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
README_BEGIN, README_END = "<!-- contents:begin -->", "<!-- contents:end -->"
OWNED_TAGS = ("contents", "navigation-top", "navigation-bottom")
GLOSSARY = "glossary.md"
CONTENTS_ANCHOR = "cell-id=book-contents"
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Chapter:
    """One chapter: its notebook's file name, its title and what it shows in one line."""

    file: str
    title: str
    description: str

    @property
    def number(self) -> str:
        """The two-digit number the file name starts with."""
        return self.file[:2]

    @property
    def label(self) -> str:
        """``03 · ACTNET``: the number and the title up to its colon."""
        return f"{self.number} · {self.title.split(':')[0]}"

    @property
    def full_label(self) -> str:
        """``03 · ACTNET: learnable activations before aggregation``."""
        return f"{self.number} · {self.title}"


CHAPTERS = (
    Chapter("00_setup_and_data.ipynb", "Setting up: datasets, the retrieval protocol and the backbone",
            "the datasets and their ground truth (easy / hard / junk), average precision, the backbone and "
            "its layers, the feature cache"),
    Chapter("01_pooling_baselines.ipynb", "Pooling baselines: from a feature map to one vector per image",
            "MAC, SPoC, GeM, R-MAC, CroW, PCA-whitening: what each pooling keeps, mAP (E/M/H), result strips"),
    Chapter("02_ack_kernels.ipynb", "ACK: an image as the list of its brightest convolution kernels",
            "Wang et al., *Aggregating convolution kernels for image retrieval*: top-n kernel indices, the "
            "`dosd` distance, fast search"),
    Chapter("03_actnet_activations.ipynb", "ACTNET: learnable activations before aggregation",
            "Husain et al., *ACTNET*: learnable SinH / Exp / Weibull activations, multi-stream aggregation, "
            "triplet training, KL separability"),
    Chapter("04_multilayer_fusion.ipynb",
            "Multi-layer fusion: the low layer re-ranks the high layer's neighbours",
            "Yu et al., *complementary strengths of multi-layer CNN features*: fusing per-layer similarities"),
    Chapter("05_roi_features.ipynb", "RoI-based CNN features: regions of interest from binarised conv maps",
            "Chen et al., *region of interest based CNN features*: RoIs from binarised conv maps, re-ranking"),
    Chapter("06_activation_clusters.ipynb",
            "Activation clusters: max-pooling over Normalized-Cut clusters instead of R-MAC squares",
            "Chen et al., *aggregated deep feature from activation clusters*: Normalized-Cut clusters vs R-MAC"),
    Chapter("07_summary.ipynb", "Summary: every method side by side, and what a code costs",
            "every method on one dataset: mAP with its interval, bytes per image, describe and search time, "
            "what it learns; the reproduction ledger of all claims"),
)


@dataclass
class Book:
    """Where the chapters live; the defaults are this repository."""

    chapters: tuple[Chapter, ...] = CHAPTERS
    notebooks: Path = REPO / "notebooks"
    readme: Path | None = REPO / "README.md"
    readme_prefix: str = "notebooks/"  # the notebooks' folder as the README links it
    title: str = "Instance retrieval with CNN features"
    warnings: list[str] = field(default_factory=list)

    def path(self, chapter: Chapter) -> Path:
        """The notebook file of a chapter."""
        return self.notebooks / chapter.file

    def present(self) -> list[Chapter]:
        """The chapters whose notebook exists."""
        return [c for c in self.chapters if self.path(c).is_file()]

    def missing(self) -> list[Chapter]:
        """The chapters whose notebook does not exist (yet)."""
        return [c for c in self.chapters if not self.path(c).is_file()]


@dataclass(frozen=True)
class Section:
    """A ``## `` heading of a chapter and the fragment that links to it."""

    title: str
    anchor: str


# ---------------------------------------------------------------------------------------------------
# Reading notebooks


def read_notebook(path: Path):
    """The notebook as nbformat v4, or a ValueError naming the file when it is not one."""
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises several kinds for a damaged file
        raise ValueError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})") from exc


def owned_tag(cell) -> str | None:
    """The tag by which this script owns a markdown cell, or None (code cells are never owned)."""
    if cell.get("cell_type") != "markdown":
        return None
    tags = cell.get("metadata", {}).get("tags", [])
    return next((t for t in OWNED_TAGS if t in tags), None)


def level2_headings(source: str) -> list[str]:
    """The text of each ``## `` heading of a markdown source, outside fenced code."""
    found, fenced = [], False
    for line in source.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            found.append(line[3:].strip().rstrip("#").strip())
    return found


def nbconvert_heading_id(text: str) -> str:
    """The id nbconvert's HTML exporter gives a heading with this text."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    match = re.search(r'<h2[^>]*\sid="([^"]*)"', markdown2html_mistune("## " + text))
    if not match:
        raise ValueError(f"nbconvert gave the heading {text!r} no id")
    return html.unescape(match.group(1))


def heading_anchor(text: str, cell_id: str | None) -> str:
    """The fragment (without ``#``) that reaches this heading in JupyterLab 4 and nbconvert's HTML:
    its cell's id, or for a notebook without cell ids (format < 4.5) nbconvert's heading id."""
    return f"cell-id={cell_id}" if cell_id else nbconvert_heading_id(text)


def sections(nb) -> list[Section]:
    """Every ``## `` heading of a notebook, outside the cells this script owns, in order."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown" or owned_tag(cell):
            continue
        for text in level2_headings(cell.source):
            found.append(Section(text, heading_anchor(text, cell.get("id"))))
    return found


def read_chapters(book: Book) -> dict:
    """The notebook of every chapter that exists, by file name."""
    return {c.file: read_notebook(book.path(c)) for c in book.present()}


def book_sections(notebooks: dict) -> dict[str, list[Section]]:
    """The sections of each notebook of ``notebooks`` (file name -> notebook), by file name."""
    return {name: sections(nb) for name, nb in notebooks.items()}


# ---------------------------------------------------------------------------------------------------
# The text of the owned cells


def _link(book: Book, chapter: Chapter, text: str, anchor: str = "") -> str:
    """A markdown link to a chapter, or plain text saying it is not written yet."""
    if not book.path(chapter).is_file():
        return f"{text} (not written yet)"
    return f"[{text}]({chapter.file}{'#' + anchor if anchor else ''})"


def contents_markdown(book: Book, found: dict[str, list[Section]], prefix: str = "") -> str:
    """The list of chapters, each with its description and a link to each of its sections.

    ``prefix`` goes before every file name (the README links ``notebooks/…``)."""
    lines = []
    for chapter in book.chapters:
        head = _link(book, chapter, chapter.full_label)
        if prefix:
            head = head.replace(f"]({chapter.file}", f"]({prefix}{chapter.file}")
        lines.append(f"- **{head}**: {chapter.description}")
        for section in found.get(chapter.file, []):
            target = f"{prefix}{chapter.file}#{section.anchor}"
            lines.append(f"  - [{section.title}]({target})")
    return "\n".join(lines)


def contents_cell(book: Book, found: dict[str, list[Section]]) -> str:
    """The contents cell of the first chapter."""
    return (f"## Contents\n\n"
            f"The chapters in reading order, with links to their sections. Every chapter opens with its "
            f"place in the series and ends with a link to the next one; the terms are defined in the "
            f"[Glossary]({GLOSSARY}). (Open the chapters in JupyterLab from the `notebooks/` folder, "
            f"or read the static book built by `python scripts/book.py html`.) This cell is written by "
            f"`python scripts/book.py navigation --write`.\n\n" + contents_markdown(book, found))


def navigation_top(book: Book, index: int) -> str:
    """The line under a chapter's title: its place in the series and the links around it."""
    chapters, first = book.chapters, book.chapters[0]
    parts = [f"**Chapter {int(chapters[index].number)} of {len(chapters)}**",
             f"[Contents]({first.file}#{CONTENTS_ANCHOR})", f"[Glossary]({GLOSSARY})"]
    if index > 0:
        parts.append("previous: " + _link(book, chapters[index - 1], chapters[index - 1].label))
    if index + 1 < len(chapters):
        parts.append("next: " + _link(book, chapters[index + 1], chapters[index + 1].label))
    return " · ".join(parts)


def navigation_bottom(book: Book, index: int) -> str:
    """The last cell of a chapter: where to go next."""
    chapters, first = book.chapters, book.chapters[0]
    parts = []
    if index > 0:
        parts.append("← previous: " + _link(book, chapters[index - 1], chapters[index - 1].full_label))
    parts.append(f"[Contents]({first.file}#{CONTENTS_ANCHOR}) · [Glossary]({GLOSSARY})")
    if index + 1 < len(chapters):
        parts.append("next: " + _link(book, chapters[index + 1], chapters[index + 1].full_label) + " →")
    else:
        parts.append("the end of the series")
    return "---\n\n" + " · ".join(parts)


def owned_cells(book: Book, index: int, found: dict[str, list[Section]]):
    """(cells after the title, cells at the end) as lists of (tag, source) for chapter ``index``."""
    top = [("contents", contents_cell(book, found))] if index == 0 else []
    top.append(("navigation-top", navigation_top(book, index)))
    return top, [("navigation-bottom", navigation_bottom(book, index))]


# ---------------------------------------------------------------------------------------------------
# Placing the owned cells


def _is_title(cell) -> bool:
    return cell.cell_type == "markdown" and cell.source.lstrip().startswith("# ")


def _owned_cell(tag: str, source: str, old, used_ids: set[str]):
    """The owned cell with this text and the id ``book-<tag>``: the old one (its metadata kept) or a
    new one."""
    import nbformat

    cell_id = f"book-{tag}"
    if cell_id in used_ids:
        raise ValueError(f"another cell already has the id {cell_id!r}, which the '{tag}' cell needs")
    cell = old if old is not None else nbformat.v4.new_markdown_cell(source, metadata={"tags": [tag]})
    cell.source = source
    cell.id = cell_id
    return cell


def place_navigation(nb, top, bottom) -> list[str]:
    """Put the owned cells ``top`` after the title and ``bottom`` at the end of ``nb`` (in place).

    Returns what was wrong, one phrase each (empty when the notebook was already right)."""
    import copy

    def layout(cells):
        return [(c.cell_type, c.source, owned_tag(c), c.get("id") if owned_tag(c) else None) for c in cells]

    before = layout(nb.cells)
    old: dict[str, object] = {}
    problems = []
    for cell in nb.cells:
        tag = owned_tag(cell)
        if tag is None:
            continue
        if tag in old:
            problems.append(f"a second '{tag}' cell (removed)")
        else:
            old[tag] = copy.deepcopy(cell)
    wanted = dict(top + bottom)
    for tag in old:
        if tag not in wanted:
            problems.append(f"a '{tag}' cell that does not belong here (removed)")
    for tag, source in top + bottom:
        if tag not in old:
            problems.append(f"no '{tag}' cell")
        elif old[tag].source != source:
            problems.append(f"the '{tag}' cell is out of date")
    body = [c for c in nb.cells if owned_tag(c) is None]
    used = {c.get("id") for c in body}
    title = body[:1] if body and _is_title(body[0]) else []
    new = (title + [_owned_cell(t, s, old.get(t), used) for t, s in top] + body[len(title):]
           + [_owned_cell(t, s, old.get(t), used) for t, s in bottom])
    after = layout(new)
    if after != before and not problems:
        problems.append("the navigation cells are not in their places")
    nb.cells = new
    return problems


def update_readme(text: str, table: str, name: str = "README.md") -> str:
    """``text`` with everything between the contents markers replaced by ``table``."""
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{name} needs exactly one {README_BEGIN} and one {README_END} line around the "
                         f"chapter table")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}"


def readme_table(book: Book) -> str:
    """The README's chapter table: chapter links and descriptions, in reading order."""
    rows = ["| chapter | what it shows |", "|---|---|"]
    for chapter in book.chapters:
        link = _link(book, chapter, chapter.full_label).replace(f"]({chapter.file}", f"]({book.readme_prefix}{chapter.file}")
        rows.append(f"| {link} | {chapter.description} |")
    rows.append("")
    rows.append(f"Read them in this order. Each chapter opens with its place in the series; chapter 00 "
                f"begins with the contents (links to every section) and the terms are defined in the "
                f"[glossary]({book.readme_prefix}{GLOSSARY}).")
    return "\n".join(rows)


def navigation(book: Book, write: bool, out=sys.stdout) -> list[str]:
    """Check (or, with ``write``, rewrite) every chapter's owned cells and the README's table.

    Returns the problems found, one line each; after ``write`` only missing notebooks remain."""
    import nbformat

    problems = []
    for chapter in book.missing():
        message = f"{book.path(chapter)}: chapter {chapter.number} is in the chapter list but its notebook does not exist"
        problems.append(message)
        if write:
            print(f"warning: {message}; skipped (rerun once it exists)", file=sys.stderr)
    notebooks = read_chapters(book)
    found = book_sections(notebooks)
    for index, chapter in enumerate(book.chapters):
        path = book.path(chapter)
        if chapter.file not in notebooks:
            continue
        nb = notebooks[chapter.file]
        wrong = place_navigation(nb, *owned_cells(book, index, found))
        if not wrong:
            continue
        if write:
            nbformat.write(nb, str(path))
            print(f"{path.name}: navigation rewritten ({'; '.join(wrong)})", file=out)
        else:
            problems.append(f"{path}: {'; '.join(wrong)}")
    if not (book.notebooks / GLOSSARY).is_file():
        problems.append(f"{book.notebooks / GLOSSARY}: the glossary the navigation links to does not exist")
    if book.readme is not None:
        text = book.readme.read_text(encoding="utf-8")
        new = update_readme(text, readme_table(book), book.readme.name)
        if new != text:
            if write:
                book.readme.write_text(new, encoding="utf-8")
                print(f"{book.readme.name}: contents table rewritten", file=out)
            else:
                problems.append(f"{book.readme}: the contents table is out of date")
    return problems


# ---------------------------------------------------------------------------------------------------
# The static book


def page_name(file: str) -> str:
    """The HTML page of a notebook or markdown file of the book."""
    return Path(file).stem + ".html"


def rewrite_links(source: str, book: Book) -> str:
    """Links between the book's files (``xx.ipynb#a``, ``glossary.md#a``) pointed at their pages;
    the contents cell's anchor becomes the index page."""
    first = book.chapters[0].file
    source = re.sub(rf"(\]\(|href=\"){re.escape(first)}#{CONTENTS_ANCHOR}(?=[)\"])", r"\1index.html", source)
    names = [c.file for c in book.chapters] + [GLOSSARY]
    pattern = re.compile(r"(\]\(|href=\")(" + "|".join(re.escape(n) for n in names) + r")(?=[#)\"])")
    return pattern.sub(lambda m: m.group(1) + page_name(m.group(2)), source)


def _exporter(book: Book):
    """nbconvert's HTML exporter (lab template, images embedded) with the book's link rewriting."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import Preprocessor

    class BookLinks(Preprocessor):
        """Rewrites the links of markdown cells to the book's pages."""

        def preprocess_cell(self, cell, resources, index):
            if cell.cell_type == "markdown":
                cell.source = rewrite_links(cell.source, book)
            return cell, resources

    exporter = HTMLExporter(template_name="lab", embed_images=True)
    exporter.register_preprocessor(BookLinks(), enabled=True)
    return exporter


def _markdown_notebook(source: str):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(source)]
    return nb


def index_markdown(book: Book, found: dict[str, list[Section]]) -> str:
    """The text of the index page: the title, how to read, and the contents."""
    return (f"# {book.title}\n\n"
            f"A notebook suite on CNN-based instance image retrieval, executed on the demo dataset. "
            f"Read the chapters in order; the terms are defined in the [Glossary]({GLOSSARY}).\n\n"
            f"## Contents\n\n" + contents_markdown(book, found))


def build_html(book: Book, out_dir: Path, out=sys.stdout) -> list[Path]:
    """Every existing chapter, the index and the glossary as HTML pages in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = _exporter(book)
    notebooks = read_chapters(book)
    found = book_sections(notebooks)
    written = []

    def export(nb, name: str, title: str, page: str):
        start = time.perf_counter()
        resources = {"metadata": {"name": title, "path": str(book.notebooks)}}
        body, _ = exporter.from_notebook_node(nb, resources=resources)
        target = out_dir / page
        target.write_text(body, encoding="utf-8")
        written.append(target)
        print(f"{page:34s} {time.perf_counter() - start:6.1f} s  {target.stat().st_size / 1e6:6.2f} MB  from {name}",
              file=out)

    export(_markdown_notebook(index_markdown(book, found)), "the chapter list", book.title, "index.html")
    for chapter in book.chapters:
        if chapter.file not in notebooks:
            print(f"warning: {book.path(chapter)} does not exist; no page for chapter {chapter.number}",
                  file=sys.stderr)
            continue
        export(notebooks[chapter.file], chapter.file, chapter.full_label, page_name(chapter.file))
    glossary = book.notebooks / GLOSSARY
    if glossary.is_file():
        export(_markdown_notebook(glossary.read_text(encoding="utf-8")), GLOSSARY, "Glossary", page_name(GLOSSARY))
    else:
        print(f"warning: {glossary} does not exist; no glossary page", file=sys.stderr)
    return written


class _Links(HTMLParser):
    """Collects the ids of a page and the URLs it refers to."""

    REFS = {"a": "href", "img": "src", "link": "href", "script": "src", "iframe": "src", "source": "src"}

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name" if tag == "a" else None):
            if key and attrs.get(key):
                self.ids.add(attrs[key])
        ref = attrs.get(self.REFS.get(tag, ""))
        if ref is not None:
            self.refs.append(ref)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def broken_links(html_dir: Path) -> list[str]:
    """Every local link of the pages in ``html_dir`` whose file or anchor does not exist, one line each.

    A fragment matches an id as written or percent-decoded (what a browser tries)."""
    pages = sorted(html_dir.rglob("*.html"))
    if not pages:
        return [f"{html_dir}: no HTML pages"]
    parsed = {p.resolve(): _parse(p) for p in pages}
    problems = []
    for page, links in parsed.items():
        for ref in links.refs:
            url = urlsplit(ref)
            if url.scheme or url.netloc or ref.startswith("//"):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            where = f"{page.relative_to(html_dir.resolve())}: {ref}"
            if not target.exists():
                problems.append(f"{where} (no file {target.name})")
                continue
            if not url.fragment:
                continue
            ids = parsed[target].ids if target in parsed else _parse(target).ids if target.suffix == ".html" else set()
            if url.fragment not in ids and unquote(url.fragment) not in ids:
                problems.append(f"{where} (no anchor #{url.fragment} in {target.name})")
    return problems


# ---------------------------------------------------------------------------------------------------


def main(argv=None, book: Book | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    nav = sub.add_parser("navigation", help="the navigation cells of the notebooks and the README's table")
    mode = nav.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite what is stale")
    mode.add_argument("--check", action="store_true", help="exit 1 and name what is stale")
    html_cmd = sub.add_parser("html", help="build the static book from the executed notebooks")
    html_cmd.add_argument("--out", type=Path, default=REPO / "build" / "html")
    links = sub.add_parser("links", help="check that every local link of a built book resolves")
    links.add_argument("dir", type=Path, nargs="?", default=REPO / "build" / "html")
    args = parser.parse_args(argv)
    book = book or Book()

    try:
        if args.command == "navigation":
            problems = navigation(book, write=args.write)
            if args.write:
                print("navigation up to date" + (f" except {len(problems)} missing notebook(s)" if problems else ""))
                return 0
            for line in problems:
                print(f"stale: {line}")
            if problems:
                print("run: python scripts/book.py navigation --write", file=sys.stderr)
                return 1
            print("navigation up to date")
            return 0
        if args.command == "html":
            start = time.perf_counter()
            written = build_html(book, args.out)
            problems = broken_links(args.out)
            print(f"{len(written)} pages in {args.out} in {time.perf_counter() - start:.1f} s; "
                  f"{len(problems)} broken local links")
        else:
            problems = broken_links(args.dir)
            print(f"{len(problems)} broken local links in {args.dir}")
        for line in problems:
            print(f"broken: {line}")
        return 1 if problems else 0
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
