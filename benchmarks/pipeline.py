"""Where the default pipeline's time goes: `dvc repro -f` run three times, split per stage; then the
user's loop: a one-model change and a report-only change, each run as `dvc exp run -S ...`.

    python benchmarks/pipeline.py [--runs 3] [--changes 4] [--name pipeline]

Run it in a checkout whose data the pipeline can reach (CNNLAB_DATA_MIRROR). For each run and stage
it records the stage's wall time as DVC's output shows it (from its "Running stage" line to the
next), and, from the stage process itself (CNNLAB_TIMINGS): start-up (process start to the stage's
main: interpreter and imports), load (prepared data and checkpoints), fit (the training loop, train
stages only), write (outputs, figures rendered), the rest of the stage's own work, and what remains
of the wall time: DVC's own work around the stage (hashing, caching, dvc.lock). Medians of the runs
go to benchmarks/results/<name>.md, every number to <name>.json, with each model's test accuracy.

The loop's changes alternate between a new value and the one in params.yaml (`lenet.lr` 0.02 and
back; `report.title` x and back), so every run is a real one-setting change and params.yaml ends as it
began; the experiments it makes are named bench-loop-* and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"Running stage '([^']+)'")
COLUMNS = ("wall", "startup", "load", "fit", "write", "other", "dvc")


def run_pipeline(timings: Path) -> tuple[float, list[tuple[str, float]]]:
    """One `dvc repro -f`; (total seconds, [(stage, seconds from its start line to the next)])."""
    env = {**os.environ, "CNNLAB_TIMINGS": str(timings), "PYTHONUNBUFFERED": "1"}
    from cnnlab.config import paths
    report = paths.outputs("report", root=ROOT)
    # the report keeps a figure whose data is unchanged: a forced run draws it, as a first build does
    # (put back should the run fail: DVC leaves the report's outputs to the report stage)
    kept = {figure: figure.read_bytes() for figure in (report.curves, *report.report_figures.glob("*.png"))
            if figure.exists()}
    for figure in kept:
        figure.unlink()
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(["dvc", "repro", "-f"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        log = []
        for line in proc.stdout:
            log.append(line)
            found = STAGE_LINE.search(line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
    total = time.perf_counter() - start
    if proc.returncode != 0:
        for figure, data in kept.items():
            if not figure.exists():
                figure.write_bytes(data)
        sys.exit("dvc repro -f failed:\n" + "".join(log[-30:]))
    ends = [t for _, t in marks[1:]] + [start + total]
    return total, [(stage, end - begun) for (stage, begun), end in zip(marks, ends)]


def split_stage(wall: float, record: dict) -> dict:
    startup, main = record.get("startup") or 0.0, record["main"]
    phases = {k: record.get(k, 0.0) for k in ("load", "fit", "write")}
    return {"wall": wall, "startup": startup, **phases, "other": main - sum(phases.values()),
            "dvc": wall - startup - main}


def accuracies() -> dict:
    return {path.stem: json.loads(path.read_text())["accuracy"]
            for path in sorted((ROOT / "metrics" / "test").glob("*.json"))}


def exp_run_seconds(setting: str, new_value, changes: int) -> list[float]:
    """Seconds of each `dvc exp run -S setting=...`, alternating `new_value` and the current value
    (an even number of runs: the last one puts the current value back)."""
    import yaml
    section, key = setting.split(".")
    original = (ROOT / "params.yaml").read_text()  # `-S` rewrites the file (null as an empty value)
    current = yaml.safe_load(original)[section][key]
    names, seconds = [], []
    try:
        for i in range(changes):
            value = new_value if i % 2 == 0 else current
            names.append(f"bench-loop-{os.getpid()}-{section}-{i}")
            start = time.perf_counter()
            run = subprocess.run(["dvc", "exp", "run", "--name", names[-1], "-S", f"{setting}={value}"], cwd=ROOT,
                                 capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
            if run.returncode != 0:
                sys.exit(f"dvc exp run -S {setting}={value} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    finally:
        subprocess.run(["dvc", "exp", "remove", *names], cwd=ROOT, capture_output=True)
        (ROOT / "params.yaml").write_text(original)  # the values it began with, as they were written
    return seconds


GUARD = 0.05  # no change may make a figure slower than its baseline's by more than this, on one machine


def medians(runs: list[dict], loop: dict) -> dict[str, float]:
    """The guarded figures: dvc repro -f's total and each loop change, medians in seconds."""
    return {"dvc repro -f": statistics.median(r["total"] for r in runs),
            **{label: statistics.median(seconds) for label, (_, seconds) in loop.items()}}


def guard_lines(now: dict[str, float], baseline: dict[str, float], name: str) -> list[str]:
    """Each figure against the baseline report measured on the same machine, and the guard's verdict."""
    shared = [k for k in now if k in baseline]
    slower = [k for k in shared if now[k] > baseline[k] * (1 + GUARD)]
    return [f"Against `{name}` (the same machine): " + "; ".join(
                f"{k} {now[k]:.1f} vs {baseline[k]:.1f} s ({now[k] / baseline[k] - 1:+.0%})" for k in shared) + ".",
            "", f"Guard (none more than {GUARD:.0%} slower): " +
            ("met." if not slower else f"**not met** ({', '.join(slower)})."), ""]


def loop_lines(loop: dict) -> list[str]:
    if not loop:
        return []
    lines = ["The user's loop, `dvc exp run` end to end (median; every run):", ""]
    for label, (command, seconds) in loop.items():
        lines.append(f"- {label}, `{command}`: **{statistics.median(seconds):.1f} s** "
                     f"({', '.join(f'{s:.1f}' for s in seconds)})")
    return lines + [""]


def table(runs: list[dict], loop: dict | None = None, baseline: tuple[str, dict] | None = None) -> str:
    stages = list(runs[0]["stages"])
    median = {s: {c: statistics.median(r["stages"][s][c] for r in runs) for c in COLUMNS} for s in stages}
    lines = ["| stage | " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * len(COLUMNS)]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(f"{median[stage][c]:.1f}" for c in COLUMNS) + " |")
    totals = {c: sum(median[s][c] for s in stages) for c in COLUMNS}
    lines.append("| sum of stages | " + " | ".join(f"{totals[c]:.1f}" for c in COLUMNS) + " |")
    walls = [r["total"] for r in runs]
    accs = {m: [r["test_accuracy"][m] for r in runs] for m in runs[0]["test_accuracy"]}
    return "\n".join([
        f"`dvc repro -f`, {len(runs)} runs: total wall **{statistics.median(walls):.1f} s** median "
        f"({', '.join(f'{w:.1f}' for w in walls)}).", "",
        "Test accuracy: " + ", ".join(f"{m} {statistics.median(a):.2%}" + ("" if len(set(a)) == 1 else " (varied)")
                                      for m, a in accs.items()) + ".", "",
        "Seconds per stage (medians): wall = from DVC's \"Running stage\" line to the next; startup = process "
        "start to the stage's main (interpreter, imports); load = prepared data and checkpoints; fit = the "
        "training loop; write = outputs and figures; other = the stage's remaining work; dvc = wall minus "
        "the stage process (DVC's hashing, caching and lock file).", "", *lines, "", *loop_lines(loop or {}),
        *(guard_lines(medians(runs, loop or {}), baseline[1], baseline[0]) if baseline else [])])


def read_report(name: str) -> tuple[list[dict], dict]:
    """A committed report's runs and loop, as `table` takes them."""
    found = json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())
    return found["runs"], {k: (v["command"], v["seconds"]) for k, v in found["loop"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=4, help="runs of each loop change (0: skip the loop)")
    parser.add_argument("--name", default="pipeline", help="results file name under benchmarks/results/")
    parser.add_argument("--baseline", help="a report under benchmarks/results/ measured on this machine to guard against")
    args = parser.parse_args()
    if args.changes % 2:
        parser.error("--changes must be even: every other run puts params.yaml's value back")
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as scratch:
            timings = Path(scratch) / "timings.jsonl"
            total, walls = run_pipeline(timings)
            records = {r["stage"]: r for r in map(json.loads, timings.read_text().splitlines())}
        stages = {stage: split_stage(wall, records[stage]) for stage, wall in walls}
        runs.append({"total": total, "stages": stages, "test_accuracy": accuracies()})
        print(f"run {i + 1}: {total:.1f} s; " + ", ".join(f"{s} {v['wall']:.1f}" for s, v in stages.items()),
              flush=True)
    loop = {}
    if args.changes:
        loop["one-model change"] = ("dvc exp run -S lenet.lr=0.02", exp_run_seconds("lenet.lr", 0.02, args.changes))
        loop["report-only change"] = ("dvc exp run -S report.title=x", exp_run_seconds("report.title", "x", args.changes))
        print("loop: " + "; ".join(f"{k} {statistics.median(v[1]):.1f} s" for k, v in loop.items()), flush=True)
    from cnnlab.runtime import device_name, environment
    import torch
    env = environment(torch.device("cpu"), 0)
    import datetime
    header = (f"# Pipeline time, {device_name(torch.device('cpu'))}, {env['threads']} threads, "
              f"torch {env['torch']}\n\nMeasured {datetime.date.today()} by `python benchmarks/pipeline.py`.\n\n")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(
        {"env": env, "runs": runs, "loop": {k: {"command": c, "seconds": s} for k, (c, s) in loop.items()}},
        indent=2) + "\n")
    baseline = (args.baseline, medians(*read_report(args.baseline))) if args.baseline else None
    (out / f"{args.name}.md").write_text(header + table(runs, loop, baseline))
    print(header + table(runs, loop, baseline))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
