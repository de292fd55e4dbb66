"""End to end: the real `dvc repro` and `dvc exp run` on a generated MNIST-format dataset."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_project, documented_commands, make_mirror, pipeline_env

MODELS = ["mlp", "cnn", "lenet"]
NOISE_CHART = "plots/compare/tables/noise.csv"  # the noise analysis's declared plot, drawn for every model
# the explanations analysis's: one line per model and attribution method
EXPLANATION_CHARTS = {"plots/compare/tables/deletion.csv", "plots/compare/tables/insertion.csv"}
WATCH_CHARTS = {"deletion_auc_while_learning", "silhouette_while_learning"}  # train.watch's curves, per epoch


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    project = copy_project(root / "project", train=dict(epochs=3, batch_size=32, lr=0.003, progress=False),
                           analyze=dict(explain_samples=16))
    env = pipeline_env(make_mirror(root / "mirror", n_train=800, n_test=300))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(command, cwd=project, env=env, check=True)
    return project, env


def dvc(project_env, *args) -> str:
    project, env = project_env
    result = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


MAKE_PAGES = ["README.md", "docs/index.md", "docs/install.md", "docs/getting-started.md"]


@pytest.mark.parametrize("page", MAKE_PAGES)
def test_every_page_gives_the_two_make_commands(page):
    """Each page that opens with the two commands gives the ones run here (`make repro`) and by CI (`make test`)."""
    assert documented_commands(page) == [["make", "repro"], ["make", "test"]]


def make_repro(project_env) -> str:
    """The README's first command, `make repro`, on the copy: with this checkout's environment
    (linked, and not reinstalled: -o keeps make from redoing the set-up) and the generated mirror."""
    project, env = project_env
    (project / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    make, target = documented_commands("README.md")[0]
    result = subprocess.run([make, "-o", ".venv/.installed", target], cwd=project, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_repro_builds_every_contract_output_and_is_idempotent(project):
    root = project[0]
    first = make_repro(project)
    assert {"download", "prepare", "report", *(f"train@{m}" for m in MODELS)} <= set(ran(first))
    for model in MODELS:
        test = json.loads((root / f"metrics/test/{model}.json").read_text())
        assert {"accuracy", "loss", "macro_f1"} <= set(test)
        assert test["accuracy"] > 0.6, (model, test)  # chance is 0.1
        train = json.loads((root / f"metrics/train/{model}.json").read_text())
        assert {"best_epoch", "best_val_loss", "val_accuracy", "train_seconds", "images_per_second",
                "parameters"} <= set(train)
        assert train["env"]["torch"] and train["env"]["device"] == "cpu" and train["env"]["seed"] == 0
        with open(root / f"plots/train/{model}.csv") as stream:
            rows = list(csv.DictReader(stream))
        assert list(rows[0])[:5] == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
        assert len(rows) == train["epochs_run"]
        with open(root / f"plots/watch/{model}/curves.csv") as stream:  # step 0 and every epoch, once
            assert [int(r["epoch"]) for r in csv.DictReader(stream)] == list(range(train["epochs_run"] + 1))
        first, last = (root / f"plots/watch/{model}/filters/{step}.png" for step in (0, train["epochs_run"]))
        assert first.read_bytes() != last.read_bytes()  # the filters changed as it learned
        with open(root / f"plots/confusion/{model}.csv") as stream:
            assert sum(int(r["count"]) for r in csv.DictReader(stream)) == 300  # every test image counted once
        assert (root / f"plots/evaluate/{model}_confusion.png").stat().st_size > 1000
    for model in MODELS:
        analysis = json.loads((root / f"metrics/analysis/{model}.json").read_text())
        assert set(analysis["noise_accuracy"]) == {"0", "0.05", "0.1", "0.2"}
        assert analysis["noise_accuracy"]["0"] == pytest.approx(
            json.loads((root / f"metrics/test/{model}.json").read_text())["accuracy"])  # no noise: the test score
        assert -1 <= analysis["silhouette_pixels"] <= 1 and -1 <= analysis["silhouette"] <= 1
        folder = root / "plots" / "analysis" / model
        assert len(list((folder / "maps").glob("*.png"))) == {"mlp": 8, "cnn": 11, "lenet": 12}[model]
        assert (folder / "tsne.png").is_file() and (folder / "gradcam.png").is_file() == (model != "mlp")
        assert (folder / "filters").is_dir() == (model != "mlp")
    report = (root / "report/README.md").read_text()
    assert all(f"| {m} |" in report for m in MODELS)
    assert "## Inside the networks" in report and "No convolutions: no filters to draw." in report
    assert "no Grad-CAM" in report and "## As they learned" in report
    assert (root / "plots/analysis/samples.png").is_file() and (root / "report/figures/noise.png").is_file()
    with open(root / "metrics/summary.csv") as stream:
        assert [r["model"] for r in csv.DictReader(stream)] == MODELS

    assert ran(dvc(project, "repro")) == []  # nothing changed, nothing runs
    assert_every_chart_has_every_model(json.loads(dvc(project, "plots", "show", "--json")), MODELS, ["workspace"])
    scores = json.loads((root / "metrics/scores.json").read_text())
    assert list(scores["test"]) == MODELS
    dvc(project, "plots", "show", "-o", "dvc_plots")
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "<script src" not in page and "cdn.jsdelivr" not in page  # nothing to fetch: renders offline
    assert page.count("vegaEmbed(") == 11  # the eleven charts, each rendered by the inlined Vega-Embed


def assert_every_chart_has_every_model(shown: dict, models: list[str], revisions: list[str]) -> None:
    """What a user sees in `dvc plots show/diff`: every chart drawn, with data for each model of each
    revision, and every model's compared figures."""
    plots = shown["data"]
    charts = {name: items for name, items in plots.items() if items[0]["type"] == "vega"}
    assert set(charts) == {"val_accuracy", "train_loss", "val_loss", "step_loss", "step_accuracy",
                           NOISE_CHART, "confusion", *WATCH_CHARTS} | EXPLANATION_CHARTS
    for name in EXPLANATION_CHARTS:
        values = charts.pop(name)[0]["content"]["data"]["values"]
        assert {(row["rev"], row["model"].split()[0]) for row in values} == {(rev, m) for rev in revisions for m in models}
        assert {row["model"].split()[1] for row in values} >= {"integrated_gradients", "occlusion", "random"}
    for name, items in charts.items():
        values = items[0]["content"]["data"]["values"]
        seen = {(row["rev"], row["model"]) for row in values}
        assert seen == {(rev, model) for rev in revisions for model in models}, (name, sorted(seen))
    images = {name.rsplit("/", 1)[-1] for name, items in plots.items() if items[0]["type"] == "image"}
    for model in models:
        assert f"{model}_tsne.png" in images, images
        assert (f"{model}_gradcam.png" in images) == (model != "mlp"), images
    for name in WATCH_CHARTS:  # one point per model per step, the untrained network's included
        values = plots[name][0]["content"]["data"]["values"]
        assert sorted(int(row["epoch"]) for row in values if row["model"] == models[0] and row["rev"] == revisions[0]) \
            == list(range(len(values) // (len(models) * len(revisions))))
    watched = {name.split("plots/compare/watch/", 1)[1] for name in plots if name.startswith("plots/compare/watch/")}
    for model in models:  # a step slider per model and picture: <model>_<kind>/<step>.png
        steps = {name.rsplit("/", 1)[1] for name in watched if name.startswith(f"{model}_attributions/")}
        assert steps and steps == {f"{step}.png" for step in range(len(steps))}, watched


@pytest.mark.slow
def test_a_report_option_reruns_only_the_report(project):
    root = project[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["report"]["title"] = "Changed title"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    figures = {name: (root / "report" / name).read_bytes() for name in ("curves.png", "figures/noise.png")}
    assert set(ran(dvc(project, "repro"))) <= {"report"}
    assert (root / "report/README.md").read_text().startswith("# Changed title")
    # the figures do not show the title: kept as they were, not redrawn (cnnlab.plumbing.outputs.figure_of)
    assert {name: (root / "report" / name).read_bytes() for name in figures} == figures
    subprocess.run(["git", "checkout", "params.yaml"], cwd=root, check=True)
    dvc(project, "repro")


@pytest.mark.slow
def test_an_analysis_option_never_retrains(project):
    root = project[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["analyze"]["noise_levels"] = [0, 0.3]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # what `dvc repro` would rerun: every analysis, nothing upstream (the report follows their outputs)
    assert set(json.loads(dvc(project, "status", "--json"))) == {f"analyze@{m}" for m in MODELS}
    assert ran(dvc(project, "repro", "analyze@lenet")) == ["analyze@lenet"]  # its upstream is up to date
    assert set(json.loads((root / "metrics/analysis/lenet.json").read_text())["noise_accuracy"]) == {"0", "0.3"}
    subprocess.run(["git", "checkout", "params.yaml"], cwd=root, check=True)
    # the next test commits this workspace and retrains every model anyway: no rerun of the old levels here


@pytest.mark.slow
def test_exp_run_with_fewer_epochs_retrains_and_shows_in_exp_show(project):
    root = project[0]
    subprocess.run(["git", "add", "-A"], cwd=root, env=project[1], check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=root, env=project[1], check=True)
    counts_before = json.loads((root / "metrics/data.json").read_text())["class_counts"]
    # The imbalance option is set the way the README says (`++`: Hydra adds keys to an empty mapping).
    out = dvc(project, "exp", "run", "-n", "short", "-S", "train.epochs=1", "-S", "++prepare.class_fraction={3: 0.25}")
    stages = set(ran(out))
    assert {f"train@{m}" for m in MODELS} | {"prepare"} <= stages and "download" not in stages
    counts = json.loads((root / "metrics/data.json").read_text())["class_counts"]
    assert counts["test"] == counts_before["test"]
    kept = (counts["train"][3] + counts["val"][3]) / (counts_before["train"][3] + counts_before["val"][3])
    assert abs(kept - 0.25) < 0.02
    assert counts["train"][4] + counts["val"][4] == counts_before["train"][4] + counts_before["val"][4]
    for model in MODELS:
        assert json.loads((root / f"metrics/train/{model}.json").read_text())["epochs_run"] == 1

    # a second experiment that trains one model only: it reports that model and no other
    dvc(project, "exp", "run", "-n", "mlp-only", "-S", "models=[mlp]")
    table = json.loads(dvc(project, "exp", "show", "--json"))
    reported = {}
    for baseline in table:
        for exp in [baseline] + [e for group in baseline.get("experiments") or [] for e in group["revs"]]:
            data = exp.get("data") or {}
            metrics = data.get("metrics") or {}
            reported[exp.get("name") or exp["rev"]] = {
                model for model in (metrics.get("metrics/scores.json", {}).get("data", {}).get("test") or {})}
    assert reported["short"] == set(MODELS) and reported["mlp-only"] == {"mlp"}, reported

    shown = json.loads(dvc(project, "plots", "diff", "--json", "short", "mlp-only"))
    plots = shown["data"]
    for name in ("val_accuracy", "confusion", NOISE_CHART, "step_loss"):
        seen = {(row["rev"], row["model"]) for row in plots[name][0]["content"]["data"]["values"]}
        assert seen == {("short", m) for m in MODELS} | {("mlp-only", "mlp")}, (name, sorted(seen))
    images = [name for name in plots if plots[name][0]["type"] == "image"]
    assert any("cnn_gradcam" in name for name in images)
    for items in (plots[name] for name in images):
        assert {item["revisions"][0] for item in items} <= {"short", "mlp-only"}


@pytest.mark.slow
def test_the_getting_started_commands_run_as_written(project):
    """docs/getting-started.md's commands: its first block is `make repro` (the first test here) and
    `make test` (CI's .ci/run); its second block runs here, as a user types it."""
    import re
    root, env = project
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "docs" / "getting-started.md").read_text(), re.S)
    assert [line.split()[:2] for line in blocks[0].strip().splitlines()] == [["make", "repro"], ["make", "test"]]
    if not (root / ".venv").exists():  # the environment `make repro` set up (linked by make_repro)
        (root / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    result = subprocess.run(["bash", "-e", "-c", blocks[1]], cwd=root, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Reproducing experiment" in result.stdout and "Experiment" in result.stdout  # the run, then its table
