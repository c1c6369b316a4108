"""JupyterLab in a headless Chromium for the browser test: a server on a free local port with a token,
notebook copies that end at their widget cell, running cells through JupyterLab's own commands,
moving a widget control like a reader would (keyboard on a slider, a choice in a dropdown) and
collecting every error a cell shows.

Playwright drives the system's Chromium (``executable_path``); no browser is downloaded."""
from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
SCREENSHOTS = REPO / "build" / "screenshots"

#: names under which distributions install Chromium (Debian: ``chromium``)
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: a cell tagged so is a widget cell to test; without tags, a cell calling ``interactive_view(`` is one
WIDGET_TAG = "widget"
WIDGET_CALL = re.compile(r"^(?!\s*(from|import)\b).*\binteractive_view\(", re.MULTILINE)

# The controls a reader moves, in the order they are tried (ipywidgets 8 view classes).
CONTROLS = ".jupyter-widgets:is(.widget-slider, .widget-dropdown, .widget-checkbox)"
# An Output widget (ipywidgets 8: ``widget-output``; older managers: ``jupyter-widgets-output-area``).
WIDGET_OUTPUT = ":is(.widget-output, .jupyter-widgets-output-area)"

# How an error output renders: JupyterLab shows a Python error with the stderr mime type, others with the
# error one.
ERROR_MIME = '[data-mime-type="application/vnd.jupyter.error"], [data-mime-type="application/vnd.jupyter.stderr"]'

# Settings that keep the page deterministic: every cell attached to the DOM, no news or update toasts.
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def find_browser() -> str | None:
    """The Chromium to drive: ``$INSTRET_CHROMIUM`` if set, else the first of ``BROWSER_NAMES`` on PATH."""
    explicit = os.environ.get("INSTRET_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() or shutil.which(explicit) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chapters() -> list[Path]:
    """Every chapter notebook ``notebooks/NN_name.ipynb``, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def widget_cells(nb: dict, every: bool = False) -> list[int]:
    """Indices of the widget cells to test: the first cell tagged ``widget`` (every tagged cell with
    ``every``; later widgets of a chapter often need its costly sections run first), else the first
    code cell that calls ``interactive_view(`` (the suite's one way to add widgets)."""
    code = [(i, c) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]
    tagged = [i for i, c in code if WIDGET_TAG in c.get("metadata", {}).get("tags", [])]
    if tagged:
        return tagged if every else tagged[:1]
    calls = [i for i, c in code if WIDGET_CALL.search(_source(c))]
    return calls[:1]


def _names(source: str):
    """(names a cell binds, names it reads that it does not bind itself), or None when it does not parse.
    Names bound inside its functions count as bound (reading more cells is the safe side)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    binds, reads = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (reads if isinstance(node.ctx, ast.Load) else binds).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            binds.add(node.name)
        elif isinstance(node, ast.arg):
            binds.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            binds.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            binds.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return binds, reads - binds


def needed_cells(nb: dict, widgets: list[int]) -> list[int]:
    """The code cells the widget cells need: each widget cell and, back to the top, every cell that binds
    a name one of the kept cells reads (to a fixed point). All code cells above the last widget cell
    when a cell does not parse."""
    code = [i for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code" and i <= widgets[-1]]
    names = {i: _names(_source(nb["cells"][i])) for i in code}
    if any(v is None for v in names.values()):
        return code
    keep = set(widgets)
    changed = True
    while changed:
        changed = False
        wanted = set().union(*(names[i][1] for i in keep))
        for i in code:
            if i not in keep and names[i][0] & wanted and i < max(k for k in keep):
                keep.add(i)
                changed = True
    return sorted(keep)


def widget_copy(notebook: Path, folder: Path, prefix: bool = False) -> tuple[Path | None, list[int], int]:
    """Write ``folder/notebooks/<name>``: the notebook up to its last widget cell to test, keeping of its
    code cells only those the widgets need (:func:`needed_cells`; all of them with ``prefix``), without
    outputs or saved widget state. Returns the copy, the widget cells' indices in it and the number of
    code cells kept. The copy sits one folder down, as the original does, so the chapter's
    ``../figures/...`` lands in ``folder``."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    widgets = widget_cells(nb, every=os.environ.get("INSTRET_BROWSER_ALL_WIDGETS") == "1")
    if not widgets:
        return None, [], 0
    keep = set(needed_cells(nb, widgets)) if not prefix else None
    cells, indices = [], []
    for i, cell in enumerate(nb["cells"][: widgets[-1] + 1]):
        if cell.get("cell_type") == "code":
            if keep is not None and i not in keep:
                continue
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.setdefault("metadata", {})["instret_index"] = i
        if i in widgets:
            indices.append(len(cells))
        cells.append(cell)
    nb["cells"] = cells
    nb.get("metadata", {}).pop("widgets", None)
    target = folder / "notebooks" / notebook.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return target, indices, sum(c.get("cell_type") == "code" for c in cells)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` serving ``root`` on 127.0.0.1 (a free port, a random token), with its own config,
    runtime, settings and workspace folders under ``state`` so no user setting changes what it shows."""

    def __init__(self, root: Path, state: Path, env: dict | None = None):
        self.root, self.state = Path(root), Path(state)
        self.token = secrets.token_hex(16)
        self.port = None
        self.process = None
        self.log_path = self.state / "jupyterlab.log"
        self.extra_env = env or {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _environment(self) -> dict:
        env = dict(os.environ)
        env.pop("MPLBACKEND", None)  # the kernel's inline backend draws the widget's images
        for name in ("config", "runtime"):
            folder = self.state / name
            folder.mkdir(parents=True, exist_ok=True)
            env[f"JUPYTER_{name.upper()}_DIR"] = str(folder)
        env.update(self.extra_env)
        return env

    def _write_settings(self):
        for rel, values in USER_SETTINGS.items():
            path = self.state / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")

    def start(self, timeout: float = 120.0, attempts: int = 3):
        self._write_settings()
        env = self._environment()
        last_error = ""
        for _ in range(attempts):
            self.port = free_port()
            cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True",
                   f"--LabApp.user_settings_dir={self.state / 'settings'}",
                   f"--LabApp.workspaces_dir={self.state / 'workspaces'}"]
            log = open(self.log_path, "ab")
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.root, start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._status_ok():
                    return self
                time.sleep(0.5)
            last_error = self.log_tail()
            self.stop()
        raise RuntimeError(f"JupyterLab did not start within {timeout:.0f} s ({attempts} tries); "
                           f"end of its log {self.log_path}:\n{last_error}")

    def _status_ok(self) -> bool:
        return self.api("GET", "/api/status", quiet=True) is not None

    def api(self, method: str, path: str, quiet: bool = False):
        request = urllib.request.Request(self.url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                return json.loads(body) if body else {}
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            if quiet:
                return None
            raise

    def shutdown_kernels(self):
        """Shut every kernel down (one chapter's kernel must not hold memory during the next one)."""
        for kernel in self.api("GET", "/api/kernels", quiet=True) or []:
            self.api("DELETE", f"/api/kernels/{kernel['id']}", quiet=True)

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}&reset"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None


# JavaScript run in the page ---------------------------------------------------------------------

_PANEL = "(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;" \
         " return w && w.content && w.sessionContext ? w : null; })()"

JS_KERNEL_IDLE = f"""(path) => {{
  const p = {_PANEL};
  if (!p || !p.context || p.context.path !== path || !p.context.isReady || !p.sessionContext.isReady) return false;
  const k = p.sessionContext.session && p.sessionContext.session.kernel;
  return !!k && k.status === 'idle' && k.connectionStatus === 'connected';
}}"""

JS_RUN_ALL = f"""() => {{
  const p = {_PANEL};
  window.__instretRun = undefined;
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => {{ window.__instretRun = {{ok: ok !== false}}; }},
    e => {{ window.__instretRun = {{ok: false, error: String(e)}}; }});
}}"""

JS_RUN_DONE = """() => window.__instretRun !== undefined ? window.__instretRun : false"""

JS_IDLE = f"""() => {{
  const p = {_PANEL};
  const k = p && p.sessionContext.session && p.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}}"""

# The errors a reader would see: error outputs and tracebacks on stderr, in the notebook's model and in
# the page (where the widgets' Output areas render too).
JS_ERRORS = f"""() => {{
  const p = {_PANEL};
  const found = [];
  p.content.widgets.forEach((cell, i) => {{
    if (cell.model.type !== 'code') return;
    const outputs = cell.model.outputs;
    for (let j = 0; j < outputs.length; j++) {{
      const o = outputs.get(j).toJSON();
      const text = Array.isArray(o.text) ? o.text.join('') : (o.text || '');
      if (o.output_type === 'error') found.push(`cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`);
      else if (o.output_type === 'stream' && o.name === 'stderr' && text.includes('Traceback'))
        found.push(`cell ${{i}} (stderr): ${{text.slice(-600)}}`);
    }}
  }});
  p.node.querySelectorAll('[data-mime-type="application/vnd.jupyter.error"]').forEach(
    el => found.push('page, error output: ' + el.textContent.slice(-600)));
  p.node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').forEach(
    el => {{ if (el.textContent.includes('Traceback')) found.push('page, stderr: ' + el.textContent.slice(-600)); }});
  return found;
}}"""

JS_MARK_CELL = f"""([index, mark]) => {{
  const p = {_PANEL};
  const cell = p.content.widgets[index];
  cell.node.setAttribute('data-instret-cell', mark);
  p.content.activeCellIndex = index;
  cell.node.scrollIntoView({{block: 'start'}});
  return cell.model.type;
}}"""

JS_PROGRESS = f"""() => {{
  const p = {_PANEL};
  const code = p.content.widgets.map((c, i) => [c, i]).filter(([c]) => c.model.type === 'code');
  const waiting = code.find(([c]) => c.model.executionCount === null);
  return {{done: code.length - (waiting ? code.filter(([c]) => c.model.executionCount === null).length : 0),
           of: code.length, waiting: waiting ? waiting[0].model.getMetadata('instret_index') : null,
           source: waiting ? waiting[0].model.sharedModel.getSource().split('\\n').slice(0, 3).join(' | ') : ''}};
}}"""

JS_WIDGET_IMAGE = f"""([mark, previous]) => {{
  const cell = document.querySelector(`[data-instret-cell="${{mark}}"]`);
  if (!cell) return false;
  const error = Array.from(cell.querySelectorAll('{WIDGET_OUTPUT} :is({ERROR_MIME})')).find(
    el => el.textContent.includes('Traceback') || el.getAttribute('data-mime-type').endsWith('error'));
  if (error) return {{error: error.textContent.slice(-800)}};
  const images = cell.querySelectorAll('{WIDGET_OUTPUT} img');
  if (!images.length) return false;
  const src = images[images.length - 1].getAttribute('src') || '';
  return src && src !== previous ? src : false;
}}"""


@dataclass
class ChapterRun:
    """What one chapter's browser run measured."""
    chapter: str
    cells_run: int = 0
    widget_cells: tuple = ()
    open_s: float = 0.0
    cells_s: float = 0.0
    widgets_s: float = 0.0
    total_s: float = 0.0
    moved: tuple = ()
    note: str = ""

    def line(self) -> str:
        return (f"{self.chapter}: {self.cells_run} code cells for widget cell(s) {list(self.widget_cells)} "
                f"in {self.cells_s:.1f} s; moved {', '.join(self.moved) or 'nothing'} in {self.widgets_s:.1f} s; "
                f"page open {self.open_s:.1f} s; chapter total {self.total_s:.1f} s"
                + (f" ({self.note})" if self.note else ""))


class WidgetError(AssertionError):
    pass


def open_notebook(page, server: LabServer, rel_path: str, timeout_s: float):
    """Open ``rel_path`` (relative to the server's root) with the side panel closed, once its kernel is idle."""
    page.goto(server.lab_url(rel_path), wait_until="domcontentloaded", timeout=timeout_s * 1000)
    page.wait_for_function(JS_KERNEL_IDLE, arg=rel_path, timeout=timeout_s * 1000, polling=250)
    page.evaluate("() => { if (!window.jupyterapp.shell.leftCollapsed) "
                  "return window.jupyterapp.commands.execute('application:toggle-left-area'); }")


def run_all_cells(page, timeout_s: float) -> dict:
    page.evaluate(JS_RUN_ALL)
    handle = page.wait_for_function(JS_RUN_DONE, timeout=timeout_s * 1000, polling=500)
    result = handle.json_value()
    page.wait_for_function(JS_IDLE, timeout=timeout_s * 1000, polling=250)
    return result


def errors(page) -> list[str]:
    return page.evaluate(JS_ERRORS)


def first_control(cell):
    controls = cell.locator(CONTROLS)
    if controls.count() == 0:
        raise WidgetError("the widget cell shows no slider, dropdown or checkbox "
                          "(did the ipywidgets front end load?)")
    return controls.first


def move(control, step: int) -> str:
    """Move ``control`` as a reader would and return what was done: a slider's handle gets ``step``
    presses of ArrowRight (from the keyboard focus), a dropdown the ``step``-th next option, a checkbox
    a click."""
    classes = control.get_attribute("class") or ""
    label = (control.locator(".widget-label").first.text_content() or "").strip() \
        if control.locator(".widget-label").count() else "?"
    if "widget-slider" in classes:
        handle = control.locator(".noUi-handle").first
        handle.focus()
        for _ in range(step):
            handle.press("ArrowRight")
        readout = control.locator(".widget-readout").first.text_content() if control.locator(".widget-readout").count() else ""
        return f"slider {label!r} -> {readout.strip()}"
    if "widget-dropdown" in classes:
        select = control.locator("select").first
        n = select.locator("option").count()
        current = select.evaluate("s => s.selectedIndex")
        target = (current + step) % n
        select.select_option(index=target)
        return f"dropdown {label!r} -> {select.locator('option').nth(target).text_content()!r}"
    if "widget-checkbox" in classes:
        control.locator("input[type=checkbox]").first.click()
        return f"checkbox {label!r} clicked"
    raise WidgetError(f"do not know how to move a control of classes {classes!r}")


def check_widget(page, mark: str, timeout_s: float) -> list[str]:
    """Move the first control of the widget in the marked cell twice; each move must redraw the
    widget's image with different bytes. Returns what was done."""
    cell = page.locator(f'[data-instret-cell="{mark}"]')
    control = first_control(cell)
    done, previous = [], ""
    for attempt in (1, 2):
        what = move(control, 1)
        try:
            handle = page.wait_for_function(JS_WIDGET_IMAGE, arg=[mark, previous], timeout=timeout_s * 1000,
                                            polling=250)
        except Exception as e:  # playwright's TimeoutError
            state = "no image" if not previous else "the same image"
            raise WidgetError(f"after {what} the widget showed {state} within {timeout_s:.0f} s "
                              f"(move {attempt} of 2)") from e
        shown = handle.json_value()
        if isinstance(shown, dict):
            raise WidgetError(f"after {what} the widget showed an error: {shown['error']}")
        previous = shown
        page.wait_for_function(JS_IDLE, timeout=timeout_s * 1000, polling=250)
        done.append(what)
    return done


def mark_cell(page, index: int, mark: str) -> str:
    return page.evaluate(JS_MARK_CELL, [index, mark])


def progress(page) -> str:
    """Which cell the run waits for (the first code cell without an execution count), in words."""
    state = page.evaluate(JS_PROGRESS)
    if state["done"] == state["of"]:
        return f"all {state['of']} code cells ran"
    return (f"{state['done']} of {state['of']} code cells ran; waiting for the notebook's cell {state['waiting']}: "
            f"{state['source'][:200]}")
