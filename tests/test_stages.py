"""The stage scripts as a user runs them: bad input gives one line, exit 1 and no outputs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cnnlab.models import names
from conftest import REPO, make_mirror


def project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(REPO / "stages", project / "stages")
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    return project


def run(project: Path, *args: str, mirror: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("CNNLAB_DATA_MIRROR", None)
    if mirror is not None:
        env["CNNLAB_DATA_MIRROR"] = str(mirror)
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def edit_params(project: Path, **sections) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:
            params[section] = values
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def outputs(project: Path) -> list[str]:
    found = []
    for folder in ("data", "models", "metrics", "plots", "report"):
        found += [str(p.relative_to(project)) for p in (project / folder).rglob("*") if p.is_file()]
    return found


@pytest.mark.parametrize("stage", ["download", "prepare", "train", "evaluate", "samples",
                                   "analyze", "report"])
def test_every_stage_rejects_bad_params(tmp_path, stage):
    project = project_copy(tmp_path)
    edit_params(project, train={"epochs": 0})
    args = [f"stages/{stage}.py"] + (["lenet"] if stage in ("train", "evaluate", "analyze") else [])
    assert_one_line_error(run(project, *args), "train.epochs must be an integer >= 1 and <= 10000; got 0")
    assert outputs(project) == []


@pytest.mark.parametrize("section,values,fragment", [
    ("train", {"lr": "abc"}, "train.lr must be a finite number > 0 and <= 10; got 'abc'"),
    ("data", {"max_device_bytes": -1}, "data.max_device_bytes must be an integer >= 0 or null; got -1"),
    ("bogus", {"x": 1}, "unknown key 'bogus'"),
])
def test_bad_values_stop_training_before_anything_is_written(tmp_path, section, values, fragment):
    project = project_copy(tmp_path)
    edit_params(project, **{section: values})
    assert_one_line_error(run(project, "stages/train.py", "mlp"), fragment)
    assert outputs(project) == []


def test_unknown_model_name_on_the_command_line(tmp_path):
    assert_one_line_error(run(project_copy(tmp_path), "stages/train.py", "vgg"), "MODEL one of " + ", ".join(names()))


def test_missing_mirror_file_leaves_no_raw_data(tmp_path):
    project = project_copy(tmp_path)
    mirror = make_mirror(tmp_path / "mirror", n_train=40, n_test=20)
    (mirror / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
    edit_params(project, data={"verify_checksums": False})
    assert_one_line_error(run(project, "stages/download.py", mirror=mirror), "missing MNIST/raw/t10k-images-idx3-ubyte")
    assert outputs(project) == [] and not any((project / "data").iterdir())


def test_corrupt_mirror_names_the_file(tmp_path):
    project = project_copy(tmp_path)
    mirror = make_mirror(tmp_path / "mirror", n_train=40, n_test=20)
    assert_one_line_error(run(project, "stages/download.py", mirror=mirror),
                          "train-images-idx3-ubyte.gz: corrupt or not the original", "expected 6bbc9ace")
    assert outputs(project) == []


def test_prepare_without_download_says_what_to_run(tmp_path):
    assert_one_line_error(run(project_copy(tmp_path), "stages/prepare.py"), "run the download stage first")


def test_asking_for_more_samples_than_exist(tmp_path):
    project = project_copy(tmp_path)
    mirror = make_mirror(tmp_path / "mirror", n_train=40, n_test=20)
    edit_params(project, data={"verify_checksums": False}, prepare={"train_size": 100})
    assert run(project, "stages/download.py", mirror=mirror).returncode == 0
    assert_one_line_error(run(project, "stages/prepare.py"), "prepare.train_size is 100 but the dataset has only 40")
    assert not (project / "data" / "prepared").exists()


def test_analyze_without_a_trained_model_says_what_to_run(tmp_path):
    assert_one_line_error(run(project_copy(tmp_path), "stages/analyze.py", "cnn"), "models/cnn.pt: missing",
                          "run the train stage first")


def test_a_stage_refuses_to_run_another_checkouts_code(tmp_path):
    """A venv shared between two clones imports cnnlab from the other clone: a stage must say so,
    not run that code and let dvc.lock credit this checkout's. An identical copy of the code runs."""
    from conftest import copy_project
    project = copy_project(tmp_path / "clone")
    mirror = make_mirror(tmp_path / "mirror", n_train=60, n_test=20)
    assert run(project, "stages/download.py", mirror=mirror).returncode == 0
    with open(project / "src/cnnlab/models/mlp.py", "a") as stream:
        stream.write("# edited in this clone only\n")
    result = run(project, "stages/download.py", mirror=mirror)  # cnnlab imported from REPO/src
    assert_one_line_error(result, str((REPO / "src/cnnlab").resolve()), str((project / "src/cnnlab").resolve()),
                          "pip install -e .")
