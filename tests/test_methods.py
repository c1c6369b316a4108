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
