"""Where the default pipeline's time goes: `dvc repro -f` run three times, split per stage.

    python benchmarks/pipeline.py [--runs 3] [--name pipeline]

Run it in a checkout whose data the pipeline can reach (CNNLAB_DATA_MIRROR). For each run and stage
it records the stage's wall time as DVC's output shows it (from its "Running stage" line to the
next), and, from the stage process itself (CNNLAB_TIMINGS): start-up (process start to the stage's
main: interpreter and imports), load (prepared data and checkpoints), fit (the training loop, train
stages only), write (outputs, figures rendered), the rest of the stage's own work, and what remains
of the wall time: DVC's own work around the stage (hashing, caching, dvc.lock). Medians of the runs
go to benchmarks/results/<name>.md, every number to <name>.json, with each model's test accuracy.
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


def table(runs: list[dict]) -> str:
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
        "the stage process (DVC's hashing, caching and lock file).", "", *lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="pipeline", help="results file name under benchmarks/results/")
    args = parser.parse_args()
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
    from cnnlab.runtime import device_name, environment
    import torch
    env = environment(torch.device("cpu"), 0)
    import datetime
    header = (f"# Pipeline time, {device_name(torch.device('cpu'))}, {env['threads']} threads, "
              f"torch {env['torch']}\n\nMeasured {datetime.date.today()} by `python benchmarks/pipeline.py`.\n\n")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"env": env, "runs": runs}, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(header + table(runs))
    print(header + table(runs))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
