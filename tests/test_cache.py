"""The shared cache: atomic writes, damaged entries, leftovers of killed writers."""
import json
import os
import subprocess
import sys
import time
import warnings

import pytest

from helpers import cache


def test_atomic_write_leaves_no_temporary_and_replaces_in_one_step(tmp_path):
    target = tmp_path / "a" / "entry.json"
    cache.atomic_write(target, lambda tmp: open(tmp, "w").write("1"))
    cache.atomic_write(target, lambda tmp: open(tmp, "w").write("2"))
    assert target.read_text() == "2"
    assert [p.name for p in target.parent.iterdir()] == ["entry.json"]
    with pytest.raises(ZeroDivisionError):
        cache.atomic_write(target, lambda tmp: (open(tmp, "w").write("3"), 1 / 0))
    assert target.read_text() == "2" and len(list(target.parent.iterdir())) == 1


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_writers_are_removed_when_the_cache_is_opened(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    (root / "features" / "x").mkdir(parents=True)
    dead = root / "features" / "x" / f".conv_head.maps.f16.{_dead_pid()}-0123456789ab.tmp"
    alive = root / "features" / "x" / f".meta.json.{os.getpid()}-0123456789ab.tmp"
    old_alive = root / f".v.npz.{os.getpid()}-abcdefabcdef.tmp"
    kept = root / "features" / "x" / "meta.json"
    for p in (dead, alive, old_alive, kept):
        p.write_bytes(b"x")
    day_ago = time.time() - cache.STALE_AFTER_S - 10
    os.utime(old_alive, (day_ago, day_ago))
    monkeypatch.setenv("INSTRET_CACHE", str(root))
    assert cache.cache_root() == root
    assert not dead.exists() and not old_alive.exists()
    assert alive.exists() and kept.exists()


def test_a_killed_writer_leaves_a_temporary_that_the_next_process_removes(tmp_path):
    root = tmp_path / "cache"
    code = ("import os, helpers.cache as c\n"
            f"with c.atomic_path({str(root / 'entry.bin')!r}) as tmp:\n"
            "    open(tmp, 'wb').write(b'half')\n"
            "    os._exit(9)\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 9
    leftovers = [p for p in root.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    assert cache.remove_stale_temporaries(root) == leftovers
    assert list(root.iterdir()) == []


def test_read_entry_reports_deletes_and_returns_none_for_damaged_files(tmp_path):
    good, bad, sibling = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "bad.data"
    good.write_text(json.dumps({"a": 1}))
    bad.write_text("{not json")
    sibling.write_bytes(b"data")
    read = lambda p: json.loads(p.read_text())  # noqa: E731
    assert cache.read_entry(good, read) == {"a": 1}
    assert cache.read_entry(tmp_path / "missing.json", read) is None
    with pytest.warns(cache.DamagedCacheWarning, match="bad.json.*rebuilt"):
        assert cache.read_entry(bad, read, remove=(sibling,)) is None
    assert not bad.exists() and not sibling.exists() and good.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.read_entry(bad, read) is None  # gone: plainly missing now


def test_safe_name():
    assert cache.safe_name("folder:/a b/c") == "folder__a_b_c"


def test_shown_path_names_no_machine_folder_for_the_repository_or_home(tmp_path, monkeypatch):
    from pathlib import Path

    from helpers.cache import shown_path

    repo = Path(__file__).resolve().parents[1]
    assert shown_path(repo / "data" / "demo") == "data/demo"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert shown_path(tmp_path / ".cache" / "torch" / "w.pth") == "~/.cache/torch/w.pth"
    assert shown_path("/nonexistent-root/w.pth") == "/nonexistent-root/w.pth"
