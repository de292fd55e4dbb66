"""The benchmark scripts run end to end on small generated data and write what they claim."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cnnlab.config import params as params_mod
from cnnlab.engine.inference import autocast_dtype
from conftest import REPO, synthetic_digits


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits(n: int, seed: int):
    images, labels = synthetic_digits(n, seed)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def test_speedrun_race_scores_every_seed_and_judges_by_its_numbers():
    speedrun = load_script("speedrun")
    train, test = digits(2048, 1), digits(500, 2)
    results = speedrun.race(train, test, seeds=2, params=params_mod.load(REPO / "params.yaml"))
    results.update(date="2026-12-01", env={"device_name": "test CPU", "threads": 2, "torch": torch.__version__},
                   train_images=2048, test_images=500)
    assert set(results["runs"]) == set(speedrun.CONTESTANTS)
    for runs in results["runs"].values():
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0 <= r["accuracy"] <= 1 and r["seconds"] > 0 for r in runs)
    # eight steps of 256 learn the bright square's position: every contestant beats chance
    assert all(s["mean_accuracy"] > 0.3 for s in results["summary"].values())
    ours, peer = results["summary"]["cnnlab speedrun"], results["summary"]["peer"]
    assert results["time_ratio"] == ours["mean_seconds"] / peer["mean_seconds"]
    assert results["meets_targets"] == (ours["mean_accuracy"] >= 0.99 and results["time_ratio"] <= 0.9)
    expected_precision = str(autocast_dtype("auto", torch.device("cpu")) or torch.float32).removeprefix("torch.")
    assert results["runs"]["cnnlab speedrun"][0]["precision"] == expected_precision
    table = speedrun.markdown(results)
    assert "test CPU, 2 threads" in table and table.count("\n| 0 |") == 1 and "\n| 1 |" in table
    assert ("met." if results["meets_targets"] else "**not met**.") in table


def test_gpu_check_dry_run_reports_every_step_it_ran(tmp_path):
    """benchmarks/gpu.py --dry-run on the CPU with generated MNIST: its steps run, and its report
    says what each did (the pipeline step is test_pipeline's, left out here for time)."""
    import json
    import subprocess
    import sys
    from conftest import make_mirror, pipeline_env
    env = pipeline_env(make_mirror(tmp_path / "mirror", n_train=3200, n_test=600))
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--no-verify", "--out", str(tmp_path / "out"),
                           "--steps", "cuda-tests,speedrun,ddp"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-dry-run.json").read_text())
    status = {step["name"]: step for step in report["steps"]}
    assert list(status) == ["cuda-tests", "speedrun", "ddp"] and report["dry_run"]
    skipped_or_passed = "passed" if torch.cuda.is_available() else "skipped"
    assert status["cuda-tests"]["status"] == "ok" and skipped_or_passed in status["cuda-tests"]["result"]
    assert status["speedrun"]["status"] == "ok" and "cnnlab speedrun" in status["speedrun"]["result"]
    assert status["ddp"]["status"] == "ok" and "2 process(es)" in status["ddp"]["result"]
    table = (tmp_path / "out" / "gpu-dry-run.md").read_text()
    assert "(dry run on the CPU)" in table and "| ddp | ok |" in table


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry():
    import subprocess
    import sys
    if torch.cuda.is_available():
        return
    done = subprocess.run([sys.executable, "benchmarks/gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA GPU here" in done.stderr and "--dry-run" in done.stderr


def test_cifar_recipe_benchmark_trains_every_seed_and_reports_every_epoch(tmp_path):
    """benchmarks/cifar.py on a small generated folder of colour images (one epoch of a narrow
    airbench): prepare splits it as the pipeline would, each seed trains and is scored with and
    with each set of test-time views, and the report judges by its own numbers."""
    from PIL import Image
    from conftest import colour_digits
    cifar = load_script("cifar")
    images, labels = colour_digits(300, 3)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "cifar" / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i}.png")
    params = cifar.recipe_params("airbench", ["airbench.epochs=2", "airbench.width=8", "airbench.batch_size=64",
                                              "prepare.val_size=30"])
    assert params["data"]["dataset"] == "folder" and params["prepare"]["test_fraction"] == 0.1
    assert params["airbench"]["tta"] == "flip_translate"  # the recipe's own choice, kept under the overrides
    results = cifar.run("airbench", params, tmp_path / "cifar", seeds=2)
    results.update(date="2026-12-02", env={"device_name": "test CPU", "threads": 2, "torch": torch.__version__})
    assert results["sizes"] == {"train": 240, "val": 30, "test": 30}
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    for run in results["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == [1, 2] and run["epochs"][0]["seconds"] < run["epochs"][1]["seconds"]
        assert set(run["test_accuracy_by_tta"]) == {"none", "flip", "flip_translate"} and run["train_seconds"] > 0
        assert run["test_accuracy"] == run["test_accuracy_by_tta"]["flip_translate"]
        assert all(0 <= a <= 1 for a in run["test_accuracy_by_tta"].values())
    assert results["runs"][0]["epochs"] != results["runs"][1]["epochs"]  # another seed, another fit
    assert results["meets_targets"] == (results["mean_test_accuracy"] >= 0.9 and
                                        max(r["train_seconds"] for r in results["runs"]) <= 20 * 60)
    table = cifar.markdown(results, "python benchmarks/cifar.py")
    assert "test CPU, 2 threads" in table and "240 train / 30 validation / 30 held-out test" in table
    assert table.count("\n| 0 |") == 1 and "\n| 2 |" in table and "seed 1: val" in table
    assert ("met." if results["meets_targets"] else "**not met**.") in table


def test_install_benchmark_installs_as_the_makefile_does_and_its_report_is_its_json():
    install = load_script("install")
    makefile = (REPO / "Makefile").read_text()
    for tool, expected in (("uv", "uv pip install --quiet --python $(PYTHON) $(UV_TORCH) -r $(REQUIREMENTS)"),
                           ("pip", "$(PYTHON) -m pip install --quiet $(PIP_TORCH) -r $(REQUIREMENTS)")):
        assert expected in makefile  # the Makefile's install lines, which the benchmark repeats
        commands = [" ".join(c) for c in install.install_commands(tool, "venv/bin/python", REPO / "cache")]
        assert commands[-2].endswith("-r requirements.lock") and commands[-1].endswith("--no-deps -e .")
    found = json.loads((REPO / "benchmarks" / "results" / "install.json").read_text())
    assert (REPO / "benchmarks" / "results" / "install.md").read_text() == install.markdown(found)
    assert {(run["tool"], run["cache"]) for run in found["runs"]} == {(t, c) for t in ("uv", "pip") for c in ("empty", "full")}


def test_the_pipeline_guard_compares_each_figure_with_its_baseline():
    """benchmarks/pipeline.py: a figure more than 5% slower than the baseline's fails the guard; one
    within 5%, or faster, passes; figures the baseline lacks are not judged."""
    pipeline = load_script("pipeline")
    baseline = {"dvc repro -f": 60.0, "report-only change": 2.0}
    passed = pipeline.guard_lines({"dvc repro -f": 63.0, "report-only change": 1.5, "one-model change": 30.0},
                                  baseline, "before")
    assert "dvc repro -f 63.0 vs 60.0 s (+5%)" in passed[0] and "one-model" not in passed[0]
    assert passed[2] == "Guard (none more than 5% slower): met."
    failed = pipeline.guard_lines({"dvc repro -f": 63.1, "report-only change": 2.2}, baseline, "before")
    assert failed[2] == "Guard (none more than 5% slower): **not met** (dvc repro -f, report-only change)."


def test_the_loop_takes_turns_and_puts_each_committed_params_file_back(tmp_path, monkeypatch):
    """benchmarks/pipeline.py --against: the exp runs alternate the checkouts (ABBA) and the values
    (new, committed), and each params.yaml ends as committed, in its own form, even when a run fails."""
    import subprocess
    pipeline = load_script("pipeline")
    roots = []
    for name, lr in (("now", "0.01"), ("base", "0.02")):
        root = tmp_path / name
        root.mkdir()
        (root / "params.yaml").write_text(f"lenet:\n  lr: {lr}   # a comment -S would drop\n")
        for command in (["init", "-q"], ["add", "params.yaml"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                                                 "commit", "-qm", "p"]):
            subprocess.run(["git", *command], cwd=root, check=True)
        roots.append(root)
    calls, real_run = [], subprocess.run

    def fake_run(args, cwd=None, **kwargs):
        if args[0] != "dvc":
            return real_run(args, cwd=cwd, **kwargs)
        if args[1:3] == ["exp", "run"]:
            calls.append((Path(cwd).name, args[-1]))
            (Path(cwd) / "params.yaml").write_text("lenet:\n  lr: rewritten\n")
        return subprocess.CompletedProcess(args, 0, "", "")
    monkeypatch.setattr(pipeline.subprocess, "run", fake_run)
    seconds = pipeline.exp_run_seconds(roots, "lenet.lr", 0.5, 4)
    assert calls == [("now", "lenet.lr=0.5"), ("base", "lenet.lr=0.5"), ("base", "lenet.lr=0.02"),
                     ("now", "lenet.lr=0.01"), ("now", "lenet.lr=0.5"), ("base", "lenet.lr=0.5"),
                     ("base", "lenet.lr=0.02"), ("now", "lenet.lr=0.01")]
    assert [len(seconds[root]) for root in roots] == [4, 4]
    assert (roots[0] / "params.yaml").read_text() == "lenet:\n  lr: 0.01   # a comment -S would drop\n"

    def failing_run(args, cwd=None, **kwargs):
        result = fake_run(args, cwd=cwd, **kwargs)
        return subprocess.CompletedProcess(args, 1, "", "boom") if args[1:3] == ["exp", "run"] else result
    monkeypatch.setattr(pipeline.subprocess, "run", failing_run)
    with pytest.raises(SystemExit, match="boom"):
        pipeline.exp_run_seconds(roots, "lenet.lr", 0.5, 2)
    assert (roots[1] / "params.yaml").read_text() == "lenet:\n  lr: 0.02   # a comment -S would drop\n"
