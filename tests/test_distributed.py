"""Data-parallel training under torchrun, on the CPU with gloo: the same numbers as one process,
two nodes through a c10d rendezvous, a failed rank as one line, and sweeps in DVC's queue."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import REPO, synthetic_digits
from test_stages import edit_params, outputs, project_copy

N_TRAIN = 2400  # batches of 32: 75 steps an epoch, 300 over 4 epochs


def prepared_project(tmp_path: Path, name: str = "project", **train) -> Path:
    """A copy of the stages with a prepared synthetic-digits dataset, as the prepare stage writes it."""
    from cnnlab.prepare import prepare, save_prepared
    project = project_copy(tmp_path / name)
    (xt, yt), (xs, ys) = synthetic_digits(N_TRAIN + N_TRAIN // 4, 1), synthetic_digits(400, 2)
    options = {"train_size": None, "test_size": None, "samples_per_class": None, "val_fraction": 0.2,
               "val_size": None, "class_fraction": {}, "seed": 0}
    splits = prepare((torch.from_numpy(xt[:, None]), torch.from_numpy(yt).long()),
                     (torch.from_numpy(xs[:, None]), torch.from_numpy(ys).long()), tuple("0123456789"), options)
    save_prepared(splits, project / "data" / "prepared")
    # dropout off for the comparison: its masks are drawn per rank
    # fp32: the comparisons below are step by step; bf16 (precision auto on some CPUs) rounds differently per shard
    edit_params(project, train={"epochs": 4, "batch_size": 32, "lr": 0.001, "progress": True, "precision": "fp32", **train},
                mlp={"dropout": 0.0})
    return project


def run_stage(project: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=timeout)


def step_losses(project: Path, model: str) -> list[float]:
    with open(project / "plots" / "steps" / f"{model}.csv") as stream:
        return [float(row["loss"]) for row in csv.DictReader(stream)]


def train_metrics(project: Path, model: str) -> dict:
    return json.loads((project / "metrics" / "train" / f"{model}.json").read_text())


def accuracy_on_test(project: Path, model: str) -> float:
    from cnnlab.evaluate import evaluate_model
    return evaluate_model(model, project / "models" / f"{model}.pt", project / "data" / "prepared", 256).json["metrics"]["accuracy"]


@pytest.mark.parametrize("model", ["lenet", "mlp"])
def test_two_processes_give_the_same_steps_as_one(tmp_path, model):
    """gloo, 2 processes on 2 cores: the same global batches, seed and data give the same per-step
    losses as one process (float tolerance) over 300 steps, and the same accuracy within 0.1 point."""
    one = prepared_project(tmp_path, "one", nproc=1)
    two = prepared_project(tmp_path, "two", nproc=2)
    single = run_stage(one, "stages/train.py", model, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    double = run_stage(two, "stages/train.py", model)
    assert double.returncode == 0, double.stderr
    assert train_metrics(two, model)["processes"] == 2 and train_metrics(one, model)["processes"] == 1
    assert f"{model} epoch 4:" in double.stdout and double.stdout.count(f"{model} epoch 4:") == 1  # rank 0 reports
    for project in (one, two):  # train.watch: rank 0 pictures and logs every step once
        steps = [int(line.split(",")[0]) for line in (project / "plots/watch" / model / "curves.csv").read_text().split()[1:]]
        assert steps == [0, 1, 2, 3, 4]
        assert sorted(int(p.stem) for p in (project / "dvclive" / model / "plots/images/attributions").glob("*.png")) \
            == [0, 1, 2, 3, 4]
    a, b = step_losses(one, model), step_losses(two, model)
    assert len(a) == len(b) == 4 * N_TRAIN // 32
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    worst = max(abs(x - y) / x for x, y in zip(a, b))
    assert worst < 2e-4, worst  # measured: 2e-5 (LeNet), 2e-7 (MLP); one step out of line: 0.1-0.2
    assert abs(train_metrics(one, model)["val_accuracy"] - train_metrics(two, model)["val_accuracy"]) <= 0.001
    assert abs(accuracy_on_test(one, model) - accuracy_on_test(two, model)) <= 0.001


def test_two_processes_reach_the_same_accuracy_on_real_mnist(tmp_path, real_mirror):
    """Synthetic digits are learnt perfectly either way; real MNIST (a stratified 12,000, 2 epochs
    of LeNet, about 98%) shows the accuracy is the same within 0.1 point."""
    from test_stages import run
    projects = []
    for nproc in (1, 2):
        project = project_copy(tmp_path / f"n{nproc}")
        edit_params(project, prepare={"train_size": 12000}, train={"nproc": nproc, "epochs": 2, "progress": False,
                                                                          "precision": "fp32"})
        for stage in ("download", "prepare"):
            assert run(project, f"stages/{stage}.py", mirror=real_mirror).returncode == 0
        result = run_stage(project, "stages/train.py", "lenet", env={"OMP_NUM_THREADS": "1"} if nproc == 1 else {})
        assert result.returncode == 0, result.stderr
        projects.append(project)
    accuracies = [accuracy_on_test(p, "lenet") for p in projects]
    assert min(accuracies) > 0.95 and abs(accuracies[0] - accuracies[1]) <= 0.001, accuracies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meet_through_a_c10d_rendezvous(tmp_path):
    """Two torchrun invocations, --nnodes=2 --node_rank=0/1, each in its own checkout with its own
    prepared data, standing in for two machines: they train as one job of 2 ranks; the global rank
    0 writes the outputs (in its checkout only), the same as one process within tolerance."""
    one = prepared_project(tmp_path, "one", nproc=1)
    nodes = [prepared_project(tmp_path, f"node{i}", nproc=1) for i in range(2)]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    launched = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={i}", "--nproc_per_node=1",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=cnnlab-test",
         "stages/train.py", "mlp"], cwd=node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, node in enumerate(nodes)]
    results = [p.communicate(timeout=600) for p in launched]
    assert all(p.returncode == 0 for p in launched), results
    single = run_stage(one, "stages/train.py", "mlp", env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    written = [node for node in nodes if (node / "models" / "mlp.pt").exists()]
    assert len(written) == 1, "exactly one node (global rank 0) writes"
    assert train_metrics(written[0], "mlp")["processes"] == 2
    a, b = step_losses(one, "mlp"), step_losses(written[0], "mlp")
    assert len(a) == len(b) and max(abs(x - y) / x for x, y in zip(a, b)) < 2e-4


def test_a_killed_rank_fails_the_stage_in_one_line_and_leaves_nothing(tmp_path):
    # no early stop: the synthetic digits are learnt in a few epochs, and the kill must land mid-fit
    project = prepared_project(tmp_path, nproc=2, epochs=200, patience=0)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    stage = subprocess.Popen([sys.executable, "stages/train.py", "lenet"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, victim, deadline = set(), None, time.time() + 120
    while victim is None and time.time() < deadline:
        for child in psutil.Process(stage.pid).children(recursive=True):
            seen.add(child.pid)
            try:
                if child.environ().get("RANK") == "1" and "stages/train.py" in " ".join(child.cmdline()):
                    victim = child
            except psutil.Error:
                pass
        time.sleep(0.5)
    assert victim is not None, "rank 1 never started"
    time.sleep(3)  # inside the training loop
    victim.send_signal(signal.SIGKILL)
    out, err = stage.communicate(timeout=180)
    assert stage.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train lenet: rank 1 failed:"), err
    assert "SIGKILL" in lines[0] or "-9" in lines[0]
    assert not [p for p in outputs(project) if not p.startswith("data/prepared")], outputs(project)
    time.sleep(1)
    assert not [pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


RANKS_THAT_WRITE = """
import os, sys, time
from pathlib import Path
from cnnlab.plumbing.stage import outputs as staged_outputs, run as run_stage
from cnnlab.plumbing.torchrun import launcher

def main():
    if os.environ["RANK"] == "0":
        with staged_outputs() as out:
            out.json("metrics/result.json", {"written": True})
    else:  # rank 1 ends only after rank 0 has finished writing (handed over, or in place)
        deadline = time.time() + 60
        while time.time() < deadline and not any(
                p.exists() for p in (launcher()[1] / "staged.json", Path("metrics/result.json"))):
            time.sleep(0.05)
        sys.exit(int(sys.argv[1]))

run_stage(main)
"""


@pytest.mark.parametrize("rank_1_exit", [0, 3])
def test_rank_0s_outputs_are_put_in_place_only_when_every_rank_ends_well(tmp_path, monkeypatch, rank_1_exit):
    """Rank 0 has written everything when rank 1 fails: the stage still fails and leaves nothing.
    (CI once caught the killed-rank test above finishing its fit first: the outputs stayed.)"""
    from cnnlab import CnnlabError
    from cnnlab.plumbing.torchrun import launch
    (tmp_path / "metrics").mkdir()
    (tmp_path / "ranks.py").write_text(RANKS_THAT_WRITE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))
    if rank_1_exit == 0:
        launch(2, ["ranks.py", "0"], "ranks")
        assert json.loads((tmp_path / "metrics" / "result.json").read_text()) == {"written": True}
    else:
        with pytest.raises(CnnlabError, match=r"^ranks: rank 1 failed: exit code 3 .*nothing was written\)$"):
            launch(2, ["ranks.py", "3"], "ranks")
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == (["result.json"] if rank_1_exit == 0 else [])


def test_a_user_error_on_the_ranks_is_one_line_naming_a_rank(tmp_path):
    """SyncBatchNorm needs CUDA: every rank refuses it; the launcher shows one of them, once."""
    project = prepared_project(tmp_path, nproc=2, sync_batchnorm=True)
    result = run_stage(project, "stages/train.py", "resnet_small")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train resnet_small: rank "), result.stderr
    assert "train.sync_batchnorm needs CUDA" in lines[0] and "nothing was written" in lines[0]
    assert not [p for p in outputs(project) if not p.startswith("data/prepared")]


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    """NCCL needs a GPU per process: on a 1-GPU node the second rank is refused before it binds,
    which the launcher then shows as that rank's one line (a real 1-GPU machine: README)."""
    from cnnlab import CnnlabError
    from cnnlab.train.parallel import init
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("bound a GPU it does not have"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(CnnlabError, match=r"^params.yaml: train.nproc .* its 1 GPU; set it to at most 1$"):
        init("cuda")


def test_the_rank_with_its_own_error_is_named_before_those_that_lost_a_peer(tmp_path):
    from cnnlab.plumbing.torchrun import _first_failure
    for rank, time_, own, message in ((0, 1.0, False, "RuntimeError: Connection closed by peer"),
                                      (1, 2.0, True, "data/prepared/train.pt: missing")):
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps(
            {"rank": rank, "time": time_, "user_error": own, "message": message}))
    assert _first_failure(tmp_path, "") == "rank 1 failed: data/prepared/train.pt: missing"
    (tmp_path / "rank-1.json").unlink()
    report = "Root Cause (first observed failure):\n[0]:\n  time : x\n  host : h\n  rank : 1 (local_rank: 1)\n" \
             "  exitcode : -9 (pid: 42)\n  error_file: <N/A>\n  traceback : Signal 9 (SIGKILL) received by PID 42\n"
    assert _first_failure(tmp_path, report) == \
        "rank 1 failed: exit code -9 (Signal 9 (SIGKILL) received by PID 42)"


@pytest.mark.slow
def test_queued_sweep_runs_in_parallel_workers_from_a_clean_clone(tmp_path):
    """`dvc exp run --queue` twice, `dvc queue start -j 2` with one thread per worker: both runs
    find every file they need in their temporary copies and land in `dvc exp show --json`."""
    from conftest import copy_project, make_mirror, pipeline_env
    project = copy_project(tmp_path / "clone", ["mlp"], train=dict(epochs=1, batch_size=32, progress=False),
                           analyze=dict(tsne_samples=100, samples_per_class=1, explain_samples=8))
    env = pipeline_env(make_mirror(tmp_path / "mirror", n_train=400, n_test=100), threads=1)

    def sh(*command, timeout=300):
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout

    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clean clone"]):
        sh(*command)
    sh("dvc", "exp", "run", "--queue", "-n", "lr-low", "-S", "train.lr=0.001")
    sh("dvc", "exp", "run", "--queue", "-n", "lr-high", "-S", "train.lr=0.01")
    # the workers outlive `dvc queue start` and would hold a captured pipe open: send them to a file
    with open(tmp_path / "workers.log", "w") as log:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env, stdout=log, stderr=log,
                       check=True, timeout=120)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            status = sh("dvc", "queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:  # the workers end by themselves once the queue is empty; make sure of it
        subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True, timeout=120)
    assert status.count("Success") == 2, status
    shown = json.loads(sh("dvc", "exp", "show", "--json"))
    runs = {exp["name"]: exp["data"] for commit in shown for exp in (commit.get("experiments") or [])
            for exp in exp["revs"]}
    assert set(runs) == {"lr-low", "lr-high"}, runs
    for name, lr in (("lr-low", 0.001), ("lr-high", 0.01)):
        assert runs[name]["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        accuracy = runs[name]["metrics"]["metrics/scores.json"]["data"]["test"]["mlp"]
        assert 0.1 < accuracy <= 1.0
    assert runs["lr-low"]["metrics"] != runs["lr-high"]["metrics"]
