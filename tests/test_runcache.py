"""The run-cache holds train, evaluate, samples and analyze: an experiment that returns to params a
run already used restores its stages instead of running them again (DVC skips a stage with a
`cache: false` output that is not a plot or a metric; dvc.yaml declares those outputs as plots).
The report stage is the exception by design: its outputs persist while it reruns, and DVC never
run-caches a persisted output; it only gathers files (seconds)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import copy_project, make_mirror, pipeline_env

pytestmark = pytest.mark.slow
PER_MODEL = {"train@mlp", "evaluate@mlp", "analyze@mlp"}


def sh(cwd: Path, env: dict, *command: str) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout + result.stderr


def test_an_experiment_back_on_earlier_params_restores_its_stages_from_the_run_cache(tmp_path):
    project = copy_project(tmp_path / "project", ["mlp"], train=dict(epochs=1, batch_size=64, progress=False),
                           analyze=dict(tsne_samples=60, tsne_iterations=250, noise_levels=[0, 0.1],
                                        samples_per_class=1, max_channels=2, explain_samples=8))
    env = pipeline_env(make_mirror(tmp_path / "mirror", n_train=300, n_test=100), pythonpath="src", threads=1)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "cnnlab"]):
        sh(project, env, *command)
    first = sh(project, env, "dvc", "exp", "run", "-S", "mlp.dropout=0.3")
    assert PER_MODEL | {"samples", "report"} <= set(re.findall(r"Running stage '([^']+)'", first))
    scores = (project / "metrics" / "test" / "mlp.json").read_bytes()
    assert PER_MODEL <= set(re.findall(r"Running stage '([^']+)'", sh(project, env, "dvc", "exp", "run", "-S",
                                                                          "mlp.dropout=0.4")))
    back = sh(project, env, "dvc", "exp", "run", "-S", "mlp.dropout=0.3")
    assert set(re.findall(r"Running stage '([^']+)'", back)) == {"report"}, back
    assert set(re.findall(r"Stage '([^']+)' is cached - skipping run", back)) == PER_MODEL, back
    assert (project / "metrics" / "test" / "mlp.json").read_bytes() == scores
    assert json.loads(sh(project, env, "dvc", "status", "--json")) == {}
