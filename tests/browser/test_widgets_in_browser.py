"""Each chapter's widget works where a class uses it: JupyterLab in a headless Chromium.

For every chapter ``notebooks/NN_*.ipynb`` a copy holding the cells up to its widget cell (the first
cell calling ``viz.interactive_view``, or the cells tagged ``widget``) is opened in JupyterLab and
run with the notebook's own "run all cells" command. Then the first control of each widget is moved
twice (arrow keys on a slider, another option of a dropdown); each move must redraw the widget's
image with different bytes, and no cell may show an error or a traceback. A screenshot per chapter
goes to ``build/screenshots/<chapter>.png``.

Runs only with ``pytest --browser`` (``run_tests.sh`` runs it after nbval, when the feature cache
is warm). Skips, saying why, where no Chromium is found (``$INSTRET_CHROMIUM`` or ``chromium`` on
PATH; ``.ci/run`` installs Debian's). ``$INSTRET_BROWSER_TIMEOUT`` bounds one chapter's cells
(seconds, default 300). The first widget of each chapter is moved; ``INSTRET_BROWSER_ALL_WIDGETS=1``
moves every tagged one (the later ones often need a chapter's costly sections run first)."""
from __future__ import annotations

import os

import pytest

import lab_session as lab

pytestmark = pytest.mark.browser

#: chapters that have no widget, and why (every other chapter must have one)
CHAPTERS_WITHOUT_WIDGETS = {"07_summary": "a summary of tables computed over every method, nothing to move"}
CELLS_TIMEOUT_S = float(os.environ.get("INSTRET_BROWSER_TIMEOUT", "300"))
OPEN_TIMEOUT_S = 180.0
REDRAW_TIMEOUT_S = 180.0
VIEWPORT = {"width": 1400, "height": 1000}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]


@pytest.fixture(scope="session")
def chromium_path():
    path = lab.find_browser()
    if path is None:
        pytest.skip("browser test skipped: no Chromium found (set INSTRET_CHROMIUM, or install Debian's: "
                    "apt-get install chromium; .ci/run does)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the Python package playwright (it drives the system's Chromium; "
                    "no browser download): it is missing from this environment / requirements.lock")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    server = lab.LabServer(root, root / ".state", env={"INSTRET_PROGRESS": "0"})
    server.start()
    yield server
    server.stop()


def _open_and_run(browser, lab_server, notebook, prefix, run, page_errors):
    """Open a copy of ``notebook`` up to its widget cells in a new browser context and run its cells.
    Returns (context, page, widget cells in the copy, run result, errors shown)."""
    import time

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    copy, cells, n_code = lab.widget_copy(notebook, lab_server.root, prefix=prefix)
    if not cells and notebook.stem in CHAPTERS_WITHOUT_WIDGETS:
        pytest.skip(f"{notebook.name} has no widget by design: {CHAPTERS_WITHOUT_WIDGETS[notebook.stem]}")
    if not cells:
        pytest.fail(f"{notebook.name} has no widget: no code cell calls interactive_view( and none is tagged "
                    f"{lab.WIDGET_TAG!r}")
    run.cells_run, run.widget_cells = n_code, tuple(cells)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    t = time.monotonic()
    lab.open_notebook(page, lab_server, copy.relative_to(lab_server.root).as_posix(), OPEN_TIMEOUT_S)
    run.open_s += time.monotonic() - t
    t = time.monotonic()
    try:
        result = lab.run_all_cells(page, CELLS_TIMEOUT_S)
    except PlaywrightTimeout:
        progress = lab.progress(page)
        _screenshot(page, notebook, cells)
        context.close()
        raise AssertionError(f"{notebook.name}: the cells up to the widget did not finish within "
                             f"{CELLS_TIMEOUT_S:.0f} s (INSTRET_BROWSER_TIMEOUT; is the feature cache cold?): "
                             f"{progress}") from None
    run.cells_s += time.monotonic() - t
    return context, page, cells, result, lab.errors(page)


def _screenshot(page, notebook, cells):
    try:
        lab.mark_cell(page, cells[-1], f"widget-{len(cells) - 1}")
        page.screenshot(path=str(lab.SCREENSHOTS / f"{notebook.stem}.png"))
    except Exception as e:  # a screenshot is evidence, never the reason a test fails
        print(f"no screenshot of {notebook.stem}: {e}")


def _check_chapter(browser, lab_server, notebook, prefix, run, page_errors):
    """Run the copy's cells, then move each widget; returns the page's context and the widget cells."""
    import time

    context, page, cells, result, shown = _open_and_run(browser, lab_server, notebook, prefix, run, page_errors)
    try:
        assert result.get("ok") and not shown, (
            f"{notebook.name}: running the cells up to the widget failed ({result}); errors shown: {shown}; "
            f"{lab.progress(page)}")
        t = time.monotonic()
        moved = []
        for k, index in enumerate(cells):
            mark = f"widget-{k}"
            assert lab.mark_cell(page, index, mark) == "code"
            moved += lab.check_widget(page, mark, REDRAW_TIMEOUT_S)
        run.widgets_s = time.monotonic() - t
        run.moved = tuple(moved)
        shown = lab.errors(page)
        assert not shown, f"{notebook.name}: errors shown after moving the widget: {shown}"
    finally:
        _screenshot(page, notebook, cells)
        context.close()
        lab_server.shutdown_kernels()


@pytest.mark.parametrize("notebook", lab.chapters(), ids=lambda p: p.stem)
def test_widget_redraws_in_browser(notebook, browser, lab_server, capsys):
    import time

    start = time.monotonic()
    run = lab.ChapterRun(notebook.stem)
    page_errors = []
    lab.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        try:
            _check_chapter(browser, lab_server, notebook, False, run, page_errors)
        except AssertionError as e:
            if "NameError" not in str(e):
                raise
            # the copy left out a cell the widget needs (lab_session.needed_cells follows names only):
            # once more with every cell above the widget
            run.note = "a left-out cell was needed (NameError); ran every cell above the widget"
            _check_chapter(browser, lab_server, notebook, True, run, page_errors)
    finally:
        run.total_s = time.monotonic() - start
        with capsys.disabled():
            print(f"\nbrowser {run.line()}" + (f"; page errors: {page_errors}" if page_errors else ""))
