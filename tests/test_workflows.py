"""What users do with a cnnlab repository, checked on what DVC reports: an edit reruns only what it
affects (`dvc status`), a pulled clone is up to date, experiments and sweeps travel between
clones through git and a DVC remote, and the walk-throughs of docs/extending.md work as written.

One small project (2 models, 1 epoch, generated MNIST-format data) is built once, with a bare git
origin and a folder DVC remote beside it; the tests run in file order and build on each other."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_project, documented_commands, make_mirror, pipeline_env
from test_pipeline import ran

pytestmark = pytest.mark.slow
MODELS = ["mlp", "lenet"]
DOCS = REPO / "docs" / "extending.md"


def sh(cwd: Path, env: dict, *command: str, check: bool = True) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(head clone A, environment, origin URL, root folder): A has run the pipeline and pushed it."""
    root = tmp_path_factory.mktemp("team")
    project = copy_project(root / "a", MODELS, train=dict(epochs=1, batch_size=64, progress=False),
                           analyze=dict(tsne_samples=60, tsne_iterations=250, noise_levels=[0, 0.1],
                                        max_channels=2, explain_samples=8))
    env = pipeline_env(make_mirror(root / "mirror", n_train=300, n_test=100),
                       pythonpath="src", threads=1)  # each clone runs its own code
    origin = root / "origin.git"
    sh(root, env, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    sh(project, env, "git", "init", "-q", "-b", "main")
    sh(project, env, "dvc", "remote", "add", "-d", "store", str(root / "store"))  # a folder (or NFS) remote
    sh(project, env, "git", "add", "-A")
    sh(project, env, "git", "commit", "-qm", "cnnlab")
    sh(project, env, "dvc", "repro")
    sh(project, env, "git", "add", "-A")
    sh(project, env, "git", "commit", "-qm", "pipeline run")
    sh(project, env, "git", "remote", "add", "origin", str(origin))
    sh(project, env, "git", "push", "-q", "origin", "main")
    sh(project, env, "dvc", "push", "--run-cache")
    return project, env, str(origin), root


def status(project: Path, env: dict) -> set[str]:
    """The stages `dvc status` marks as changed."""
    return set(json.loads(sh(project, env, "dvc", "status", "--json")))


def clone(team, name: str) -> Path:
    _, env, origin, root = team
    sh(root, env, "git", "clone", "-q", origin, name)
    return root / name


def test_edits_rerun_only_what_they_affect(team):
    project, env, _, _ = team
    assert status(project, env) == set()

    def after(edit_path: str, text: str) -> set[str]:
        path = project / edit_path
        path.write_text(path.read_text() + text) if path.exists() else path.write_text(text)
        try:
            return status(project, env)
        finally:
            sh(project, env, "git", "checkout", "--", edit_path, check=False)
            sh(project, env, "git", "clean", "-qfd", "src", check=False)

    assert after("src/cnnlab/models/lenet.py", "# edited\n") == {"train@lenet", "evaluate@lenet", "analyze@lenet"}
    assert after("src/cnnlab/analyze.py", "# edited\n") == {"analyze@mlp", "analyze@lenet"}
    assert after("src/cnnlab/datasets/idx.py", "# edited\n") == {"download", "prepare"}
    assert after("src/cnnlab/report.py", "# edited\n") == {"report"}
    # a new model (its file, and a section in params.yaml) changes no existing stage
    assert after("src/cnnlab/models/brand_new.py", "# a new model\n") == set()
    assert after("params.yaml", "brand_new:\n  lr: 0.1\n") == set()


def test_a_params_mistake_stops_in_one_line_and_costs_no_report(team):
    """`models: [mlp, mlp]`: DVC drops the duplicate stage and runs the report, which refuses the
    params; the last report stays (its outputs persist until the stage succeeds)."""
    project, env, _, _ = team
    kept = {p: (project / p).read_bytes() for p in ("report/README.md", "metrics/scores.json", "plots/compare/epochs.csv")}
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("models:\n- mlp\n- lenet\n", "models:\n- mlp\n- mlp\n"))
    try:
        result = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode != 0
        assert "error: params.yaml: models must be a non-empty list of distinct names" in result.stdout + result.stderr
        assert {p: (project / p).read_bytes() for p in kept} == kept
    finally:
        (project / "params.yaml").write_text(text)
    assert status(project, env) == set()


def test_a_pulled_clone_is_up_to_date_and_retrains_nothing(team):
    _, env, _, _ = team
    b = clone(team, "b")
    sh(b, env, "dvc", "pull")
    assert status(b, env) == set()
    assert ran(sh(b, env, "dvc", "repro")) == []
    shown = json.loads(sh(b, env, "dvc", "plots", "show", "--json"))
    values = shown["data"]["val_accuracy"][0]["content"]["data"]["values"]
    assert {row["model"] for row in values} == set(MODELS)
    assert (b / "models" / "lenet.pt").is_file() and (b / "report" / "README.md").is_file()
    # the report rebuilds from what was pulled, without training
    assert ran(sh(b, env, "dvc", "repro", "-f", "-s", "report")) == ["report"]


def exp_names(shown: list, file: str = "metrics/scores.json") -> dict[str, dict]:
    """name -> the metrics `file` of every experiment in `dvc exp show --json`."""
    found = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for exp in group["revs"]:
                data = exp.get("data") or {}
                found[exp.get("name")] = (data.get("metrics") or {}).get(file, {}).get("data", {})
    return found


def test_an_experiment_travels_between_clones_and_a_one_model_change_trains_one_model(team):
    a, env, _, root = team
    out = sh(a, env, "dvc", "exp", "run", "-n", "faster-lenet", "-S", "lenet.lr=0.02")
    assert set(ran(out)) == {"train@lenet", "evaluate@lenet", "analyze@lenet", "report"}
    accuracy = json.loads((a / "metrics" / "scores.json").read_text())["test"]["lenet"]
    sh(a, env, "dvc", "exp", "push", "--run-cache", "origin", "faster-lenet")

    c = clone(team, "c")
    sh(c, env, "dvc", "pull", "--run-cache")
    sh(c, env, "dvc", "exp", "pull", "origin", "faster-lenet")
    assert exp_names(json.loads(sh(c, env, "dvc", "exp", "show", "--json")))["faster-lenet"]["test"]["lenet"] == accuracy
    sh(c, env, "dvc", "exp", "apply", "faster-lenet")
    sh(c, env, "dvc", "pull")
    assert status(c, env) == set() and ran(sh(c, env, "dvc", "repro")) == []  # its model came, not retrained
    sh(c, env, "git", "checkout", "-q", "--", ".")
    sh(c, env, "dvc", "checkout", "-q")

    # in a freshly pulled clone (b, from the test before), a change to one model's section trains that model only
    b = root / "b"
    out = sh(b, env, "dvc", "exp", "run", "-n", "mlp-dropout", "-S", "mlp.dropout=0.3")
    assert set(ran(out)) == {"train@mlp", "evaluate@mlp", "analyze@mlp", "report"}


def test_two_sweep_workers_run_concurrently_and_both_show_up_in_the_head_clone(team):
    a, env, origin, root = team
    worker = REPO / "cluster" / "worker.sh"
    jobs = [subprocess.Popen([str(worker), origin, "--", "-S", f"mlp.dropout={dropout}"], cwd=root, text=True,
                             env={**env, "CNNLAB_EXP_NAME": f"sweep-{i}", "CNNLAB_WORK_DIR": str(root)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i, dropout in enumerate((0.0, 0.5))]
    outputs = [job.communicate(timeout=900)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs
    for out in outputs:  # each trained only what its override changed; the rest came from the run-cache
        assert set(ran(out)) == {"train@mlp", "evaluate@mlp", "analyze@mlp", "report"}, out
    assert not list(root.glob("cnnlab-worker.*"))  # each worker removed its clone
    sh(a, env, "dvc", "exp", "pull", "origin", "sweep-0", "sweep-1")
    table = json.loads(sh(a, env, "dvc", "exp", "show", "--json"))
    assert {"sweep-0", "sweep-1"} <= set(exp_names(table))
    mlp = exp_names(table, "metrics/models/mlp.json")  # each worker's own MLP (dropout 0 and 0.5)
    assert mlp["sweep-0"]["silhouette"] != mlp["sweep-1"]["silhouette"], mlp
    plots = json.loads(sh(a, env, "dvc", "plots", "diff", "--json", "sweep-0", "sweep-1"))["data"]
    seen = {(row["rev"], row["model"]) for row in plots["val_accuracy"][0]["content"]["data"]["values"]}
    assert seen == {(rev, m) for rev in ("sweep-0", "sweep-1") for m in MODELS}


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.S)


def walkthrough_commands() -> list[list[str]]:
    """The page's commands, in its order: add a model, add an analysis, change the loss, add a dataset."""
    commands = documented_commands("docs/extending.md")
    assert len(commands) == 4, commands
    return commands


def test_the_add_a_model_and_add_an_analysis_walkthroughs_work_as_written(team):
    a, env, _, _ = team
    python, yaml_blocks = code_blocks("python"), code_blocks("yaml")
    (a / "src/cnnlab/models/tiny.py").write_text(python[0])
    with open(a / "params.yaml", "a") as stream:
        stream.write(yaml_blocks[0])
    assert status(a, env) == set()  # a new model changes no existing stage
    out = sh(a, env, *walkthrough_commands()[0])
    assert set(ran(out)) == {"train@tiny", "evaluate@tiny", "analyze@tiny", "report"}
    assert json.loads((a / "metrics/scores.json").read_text())["test"]["tiny"] > 0.3  # chance: 0.1
    assert json.loads((a / "metrics/analysis/tiny.json").read_text())["gradcam_layer"] == "relu (ReLU)"

    (a / "src/cnnlab/analyses/confidence.py").write_text(python[1])
    every = {f"analyze@{m}" for m in [*MODELS, "tiny"]}  # the workspace now trains tiny too
    assert status(a, env) == every
    assert set(ran(sh(a, env, *walkthrough_commands()[1]))) == every | {"report"}
    for model in [*MODELS, "tiny"]:
        shares = [float(r.split(",")[1]) for r in (a / f"plots/tables/{model}/confidence.csv").read_text().split()[1:]]
        assert sum(shares) == pytest.approx(1.0)
        assert 0.1 <= json.loads((a / f"metrics/analysis/{model}.json").read_text())["mean_confidence"] <= 1
    chart = json.loads(sh(a, env, "dvc", "plots", "show", "--json"))["data"]["plots/compare/tables/confidence.csv"]
    assert {row["model"] for row in chart[0]["content"]["data"]["values"]} == {*MODELS, "tiny"}
    shown = (a / "report/README.md").read_text()
    assert shown.count("#### Confidence") == 3 and shown.count("mean top-class probability") == 3


def test_the_change_the_loss_walkthrough_works_as_written(team):
    a, env, _, _ = team
    (a / "src/cnnlab/losses/focal.py").write_text(code_blocks("python")[2])
    trained = yaml.safe_load((a / "params.yaml").read_text())["models"]  # earlier walk-throughs may add some
    assert status(a, env) == {f"train@{m}" for m in trained}
    ran_stages = set(ran(sh(a, env, *walkthrough_commands()[2])))
    assert ran_stages == {f"{stage}@{m}" for stage in ("train", "evaluate", "analyze") for m in trained} | {"report"}
    assert json.loads((a / "metrics/train/lenet.json").read_text())["val_accuracy"] > 0.3  # chance: 0.1


def test_the_add_a_dataset_walkthrough_works_as_written(team):
    a, env, _, _ = team
    before = status(a, env)
    with open(a / "src/cnnlab/datasets/__init__.py", "a") as stream:
        stream.write("\n" + code_blocks("python")[3])
    assert status(a, env) - before == {"download", "prepare"}
    out = sh(a, env, *walkthrough_commands()[3])
    assert {"download", "prepare"} <= set(ran(out))
    assert json.loads((a / "metrics/data.json").read_text())["classes"] == [str(d) for d in range(10)]
