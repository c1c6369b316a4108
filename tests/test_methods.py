import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.data import load_dataset
from helpers.evaluate import evaluate_scores
from helpers.methods import RetrievalMethod, evaluate_method, make_method, register_method

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mac", "spoc", "gem", "rmac", "crow"])
def test_pooling_baselines_retrieve_real_photos(name, photo_folder, backbone, isolated_cache):
    ds = load_dataset(f"folder:{photo_folder}")
    method = make_method(name, backbone, 160)
    scores = method.search(ds)
    assert scores.shape == (ds.n_db, ds.n_queries)
    results = evaluate_scores(ds, scores)
    # four very different photographs, each with a crop and a mirrored copy: any sane global
    # descriptor ranks the two other views of the same photo first
    assert results["mAP"] > 90, results


def test_whitening_is_learned_on_the_training_set(photo_folder, realsmoke, backbone, isolated_cache):
    method = make_method("gem", backbone, 160, whiten=True)
    assert method.needs_training
    with pytest.raises(RuntimeError, match="fit"):
        method.describe(load_dataset(f"folder:{photo_folder}"), "db")
    method.fit(load_dataset(f"folder:{realsmoke}"))
    desc = method.describe(load_dataset(f"folder:{photo_folder}"), "db")
    assert desc.shape == (12, 22)  # 23 training photos span 22 whitened dimensions
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1, rtol=1e-4)


def test_evaluate_method_refuses_training_on_the_evaluated_set(photo_folder, isolated_cache):
    with pytest.raises(ValueError, match="differ"):
        evaluate_method(f"folder:{photo_folder}", method_name="gem", image_size=128,
                        train_dataset=f"folder:{photo_folder}", whiten=True)


def test_unknown_method_and_option(backbone):
    with pytest.raises(ValueError, match="unknown method"):
        make_method("nonsense", backbone, 128)
    with pytest.raises(TypeError):
        make_method("gem", backbone, 128, colour="red")


def test_registry_rejects_a_second_class_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_method("gem")(type("Other", (RetrievalMethod,), {}))


def _cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


def test_cli_on_real_photos(realsmoke, tmp_path):
    run = _cli("evaluate", "--dataset", f"folder:{realsmoke}", "--method", "gem", "--image-size", "256",
               env_extra={"INSTRET_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"mAP=(\d+\.\d\d)", last)
    assert match, last
    assert 30 < float(match.group(1)) <= 100


def test_cli_errors_are_clear(tmp_path):
    run = _cli("evaluate", "--dataset", "roxford5k", "--method", "gem",
               env_extra={"INSTRET_DATA": str(tmp_path / "nodata")})
    assert run.returncode == 2
    assert "download_datasets.py roxford5k" in run.stderr
    run = _cli("evaluate", "--dataset", "demo", "--method", "nonsense")
    assert run.returncode == 2 and "invalid choice" in run.stderr
    run = _cli("evaluate", "--dataset", f"folder:{tmp_path}", "--method", "gem", "--option", "whiten")
    assert run.returncode == 2 and "KEY=VALUE" in run.stderr


def _copy_folder(src, dst, rename=None):
    import shutil

    shutil.copytree(src, dst)
    if rename:
        (dst / rename[0]).rename(dst / rename[1])
    return dst


@pytest.mark.parametrize("method", ["gem", "ack"])
def test_unreadable_files_leave_the_ground_truth(method, photo_folder, tmp_path, isolated_cache):
    """Bad files are neither queries nor database images: the mAP equals that of the folder without
    them, whatever the instance folder holding them is called."""
    clean = evaluate_method(f"folder:{photo_folder}", method_name=method, image_size=96)
    results = []
    for name in ("aaa", "zzz"):
        folder = _copy_folder(photo_folder, tmp_path / f"bad_{name}")
        (folder / name).mkdir()
        (folder / name / "empty.jpg").write_bytes(b"")
        (folder / name / "text.jpg").write_text("not an image")
        (folder / "cat" / "truncated.jpg").write_bytes((folder / "cat" / "cat_0.jpg").read_bytes()[:200])
        with pytest.warns(UserWarning, match="skipp"):
            results.append(evaluate_method(f"folder:{folder}", method_name=method, image_size=96))
    for r in results:
        assert len(r["unreadable"]) == 3
        assert r["n_queries"] == clean["n_queries"] == 12
        assert r["mAP"] == pytest.approx(clean["mAP"], abs=1e-9)


def test_cli_lists_unreadable_files_and_refuses_bad_options(photo_folder, tmp_path, capsys, monkeypatch):
    from helpers import cli

    (photo_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    env = {"INSTRET_CACHE": str(tmp_path / "cache")}
    run = _cli("evaluate", "--dataset", f"folder:{photo_folder}", "--method", "gem", "--image-size", "96",
               env_extra=env)
    assert run.returncode == 0, run.stderr
    assert "1 unreadable images: " in run.stdout and "broken.jpg" in run.stdout
    # the refusals in this process (the exit status is main's return value; argparse exits with 2)
    monkeypatch.setenv("INSTRET_CACHE", env["INSTRET_CACHE"])

    def main(*argv):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    for option, words in (("whiten=no", None), ("whiten=off", "true or false"),
                          ("colour=red", "unknown options"), ("whiten_dim=abc", "integer")):
        code, out, err = main("evaluate", "--dataset", f"folder:{photo_folder}", "--method", "gem",
                              "--image-size", "96", "--option", option)
        if words is None:
            assert code == 0, err
            assert "train_dataset=None" in out   # whitening stayed off
        else:
            assert code == 2, out
            lines = err.strip().splitlines()
            assert lines[-1].startswith("error:") and words in lines[-1] and "Traceback" not in err
    code, out, err = main("evaluate", "--dataset", f"folder:{photo_folder}", "--image-size", "100000")
    assert code == 2 and "image-size" in err and "Traceback" not in err


def test_training_on_the_evaluated_set_is_refused_under_any_spelling(photo_folder, tmp_path, isolated_cache):
    import os
    import warnings as w

    link = tmp_path / "link"
    os.symlink(photo_folder, link)
    for spelling in (f"{photo_folder}/", f"{photo_folder}/../{photo_folder.name}", str(link)):
        with pytest.raises(ValueError, match="differ"):
            evaluate_method(f"folder:{photo_folder}", method_name="gem", image_size=96,
                            train_dataset=f"folder:{spelling}", whiten=True)
    partial = _copy_folder(photo_folder, tmp_path / "partial")
    import shutil

    shutil.rmtree(partial / "cat")
    os.symlink(photo_folder / "cat", partial / "cat")       # shares the cat images
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        evaluate_method(f"folder:{photo_folder}", method_name="gem", image_size=96,
                        train_dataset=f"folder:{partial}", whiten=True, whiten_dim=4)
    assert any("shares 3 of its images" in str(c.message) for c in caught)


def test_cli_refused_pickle_is_one_error_line(tmp_path):
    import pickle

    root = tmp_path / "data"
    (root / "roxford5k" / "jpg").mkdir(parents=True)
    (root / "roxford5k" / "jpg" / "a.jpg").write_bytes(b"")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "roxford5k" / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": [Evil()]}))
    run = _cli("evaluate", "--dataset", "roxford5k", env_extra={"INSTRET_DATA": str(root)})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error:") and "refusing to unpickle" in run.stderr
