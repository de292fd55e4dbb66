"""The GPU check in one command: what cnnlab does on a CUDA machine, measured and written down.

    python benchmarks/gpu.py             # on a CUDA machine: benchmarks/results/gpu-<device>.md and .json
    python benchmarks/gpu.py --dry-run   # anywhere: the same steps on the CPU, on small data, to check the script

Steps, each a separate process with its own time limit (8 minutes in all), so that one failure is
reported and the others still run:
  cuda-tests  pytest -m cuda (tests/test_cuda.py: data on the GPU, pinned host memory, mixed
              precision, a GPU checkpoint read on the CPU)
  pipeline    the default `dvc repro` in a scratch copy of this checkout: every stage, its test accuracies
  speedrun    benchmarks/speedrun.py on the GPU: cnnlab's one-epoch MNIST recipe against the peer's
  resnet18    one epoch of the ResNet18 study's recipe (AdamW, batch 128) under mixed precision
  ddp         LeNet trained by 2 processes (torchrun, NCCL), when the machine has 2 GPUs
The data comes from CNNLAB_DATA_MIRROR (see docs/getting-started.md). --dry-run shrinks every step
(a few thousand images, one epoch), runs on the CPU (gloo for the 2 processes), and writes its
report to a temporary folder unless --out is given: it proves the script, not the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("dvc.lock", "metrics/", "plots/", "report/", "data/raw", "data/prepared", "models/", "dvclive/")
LIMITS = {"cuda-tests": 90, "pipeline": 170, "speedrun": 90, "resnet18": 80, "ddp": 50}  # seconds: 8 minutes


def copy_project(target: Path, edit: dict, verify: bool) -> Path:
    """This checkout's sources (no outputs) in a fresh git repository, params.yaml merged with `edit`."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if not name.startswith(GENERATED) and (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["data"]["verify_checksums"] = verify
    for section, values in edit.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "gpu check"]):
        subprocess.run(command, cwd=target, env=ENV, check=True, capture_output=True)
    return target


ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(REPO / "src"),
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
       "GIT_AUTHOR_NAME": "gpu", "GIT_AUTHOR_EMAIL": "gpu@localhost", "GIT_COMMITTER_NAME": "gpu",
       "GIT_COMMITTER_EMAIL": "gpu@localhost"}


def run(command: list[str], cwd: Path, limit: float, env: dict | None = None) -> tuple[bool, float, str]:
    """(succeeded, seconds, the output's last lines)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True,
                              timeout=limit)
        ok, output = done.returncode == 0, done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        ok, output = False, f"stopped after its {limit:.0f} s limit\n" + str(stopped.stdout or "")[-2000:]
    return ok, time.perf_counter() - start, "\n".join(output.strip().splitlines()[-15:])


def test_accuracies(project: Path) -> str:
    accuracy = {path.stem: json.loads(path.read_text())["accuracy"]
                for path in sorted((project / "metrics" / "test").glob("*.json"))}
    return ", ".join(f"{model} {value:.2%}" for model, value in accuracy.items())


def train_summary(project: Path, model: str) -> str:
    metrics = json.loads((project / "metrics" / "train" / f"{model}.json").read_text())
    return (f"{metrics['dataset']}, {metrics['train_images']:,} images: val {metrics['val_accuracy']:.2%}, "
            f"{metrics['images_per_second']:,.0f} images/s, "
            f"{metrics['precision']}, {metrics['processes']} process(es), {metrics['env']['device_name']}")


def steps(work: Path, dry: bool, device: str, gpus: int, verify: bool) -> list[tuple[str, callable]]:
    """(name, a function returning (status, seconds, result line, output tail)) for each step."""
    small = {"prepare": {"train_size": 3000, "test_size": 500}, "train": {"epochs": 1, "progress": False},
             "analyze": {"explain_samples": 4, "tsne_samples": 200}} if dry else {"train": {"progress": False}}

    def cuda_tests():
        ok, seconds, tail = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                 "tests/test_cuda.py"], REPO, LIMITS["cuda-tests"])
        counts = re.findall(r"(\d+) (passed|failed|skipped|error)", tail)
        return ok, seconds, ", ".join(f"{n} {what}" for n, what in counts) or "no result", tail

    def pipeline():
        project = copy_project(work / "pipeline", small, verify)
        ok, seconds, tail = run(["dvc", "repro"], project, LIMITS["pipeline"])
        return ok, seconds, test_accuracies(project) if ok else "failed", tail

    def speedrun():
        out = work / "speedrun"
        command = [sys.executable, "benchmarks/speedrun.py", "--device", device, "--seeds", "1" if dry else "3",
                   "--out", str(out)] + (["--train-images", "3000"] if dry else []) + ([] if verify else ["--no-verify"])
        ok, seconds, tail = run(command, REPO, LIMITS["speedrun"])
        if not ok:
            return ok, seconds, "failed", tail
        summary = json.loads((out / "speedrun.json").read_text())["summary"]
        return ok, seconds, "; ".join(f"{name} {s['mean_accuracy']:.2%} in {s['mean_seconds']:.2f} s"
                                      for name, s in summary.items()), tail

    def resnet18():
        project = copy_project(work / "resnet18", {**small, "models": ["resnet18"],
                                                   "resnet18": {"epochs": 1, "precision": "auto", "batch_size": 128,
                                                                "progress": False,
                                                                # on a CPU, the 7x7/2 stem keeps the check short
                                                                **({"stem": "imagenet"} if dry else {})}}, verify)
        ok, seconds, tail = run(["dvc", "repro", "train@resnet18"], project, LIMITS["resnet18"])
        return ok, seconds, train_summary(project, "resnet18") if ok else "failed", tail

    def ddp():
        if not dry and gpus < 2:
            return None, 0.0, f"skipped: {gpus} GPU (2 needed)", ""
        project = copy_project(work / "ddp", {**small, "models": ["lenet"],
                                              "lenet": {"nproc": 2, "epochs": 1, "progress": False}}, verify)
        ok, seconds, tail = run(["dvc", "repro", "train@lenet"], project, LIMITS["ddp"])
        return ok, seconds, train_summary(project, "lenet") if ok else "failed", tail

    return [("cuda-tests", cuda_tests), ("pipeline", pipeline), ("speedrun", speedrun), ("resnet18", resnet18),
            ("ddp", ddp)]


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device_name']}" + (" (dry run on the CPU)" if report["dry_run"] else ""), "",
             f"Measured {report['date']} by `python benchmarks/gpu.py{' --dry-run' if report['dry_run'] else ''}`: "
             f"{report['gpus']} GPU(s), torch {report['torch']}, {report['total_seconds']:.0f} s in all "
             f"(limit {sum(LIMITS.values())} s).", "",
             "| step | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for step in report["steps"]:
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']:.1f} | {step['result']} |")
    failed = [s for s in report["steps"] if s["status"] == "failed"]
    for step in failed:
        lines += ["", f"{step['name']} output (last lines):", "", "```", step["tail"], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="small data on the CPU: checks the script")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: benchmarks/results, "
                                                                "or a temporary one for --dry-run)")
    parser.add_argument("--no-verify", action="store_true", help="skip MNIST checksums (generated data)")
    parser.add_argument("--steps", default=",".join(LIMITS), help=f"some of {','.join(LIMITS)} (default: all)")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if not gpus and not args.dry_run:
        print("benchmarks/gpu.py: no CUDA GPU here; run it on a CUDA machine, or add --dry-run to check the "
              "script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    out = args.out or (Path(tempfile.mkdtemp(prefix="cnnlab-gpu-")) if args.dry_run else REPO / "benchmarks" / "results")
    report = {"date": datetime.date.today().isoformat(), "dry_run": args.dry_run, "gpus": gpus, "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "CPU", "steps": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnlab-gpu-work-") as work:
        for name, step in steps(Path(work), args.dry_run, device, gpus, not args.no_verify):
            if name not in args.steps.split(","):
                continue
            try:
                ok, seconds, result, tail = step()
            except Exception as error:  # a broken step is reported; the others still run
                ok, seconds, result, tail = False, 0.0, f"{type(error).__name__}: {error}", ""
            status = "skipped" if ok is None else "ok" if ok else "failed"
            report["steps"].append({"name": name, "status": status, "seconds": round(seconds, 1),
                                    "result": result, "tail": tail})
            print(f"{name}: {status} in {seconds:.1f} s: {result}", flush=True)
    report["total_seconds"] = time.perf_counter() - start
    slug = "dry-run" if args.dry_run else re.sub(r"[^a-z0-9]+", "-", report["device_name"].lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"gpu-{slug}.md").write_text(markdown(report))
    print(f"wrote {out / f'gpu-{slug}.md'}")
    return 0 if all(s["status"] != "failed" for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
