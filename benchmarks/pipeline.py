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

The guard: `--against DIR --baseline NAME` also measures DIR, a checkout of an earlier commit (a git
worktree, its data built), taking turns with this one run by run, since a shared machine's speed
drifts over an hour; DIR's figures go to <NAME>.md and each of this checkout's is compared with its
own. `--baseline NAME` alone compares with a committed report instead.
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


def checkout_env(root: Path) -> dict:
    """The environment a checkout's stages run in: its own code first (a worktree shares the venv)."""
    return {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONUNBUFFERED": "1"}


def run_pipeline(root: Path, timings: Path) -> tuple[float, list[tuple[str, float]]]:
    """One `dvc repro -f` in `root`; (total seconds, [(stage, seconds from its start line to the next)])."""
    env = {**checkout_env(root), "CNNLAB_TIMINGS": str(timings)}
    # the report keeps a figure whose data is unchanged: a forced run draws it, as a first build does
    # (every report/ PNG, whichever commit's report this is; put back should the run fail)
    kept = {figure: figure.read_bytes() for figure in (root / "report").rglob("*.png")}
    for figure in kept:
        figure.unlink()
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(["dvc", "repro", "-f"], cwd=root, env=env, stdout=subprocess.PIPE,
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


def accuracies(root: Path) -> dict:
    return {path.stem: json.loads(path.read_text())["accuracy"]
            for path in sorted((root / "metrics" / "test").glob("*.json"))}


def one_run(root: Path, index: int) -> dict:
    """`dvc repro -f` in `root`, split per stage, with the test accuracy it gave."""
    with tempfile.TemporaryDirectory() as scratch:
        timings = Path(scratch) / "timings.jsonl"
        total, walls = run_pipeline(root, timings)
        records = {r["stage"]: r for r in map(json.loads, timings.read_text().splitlines())}
    stages = {stage: split_stage(wall, records[stage]) for stage, wall in walls}
    print(f"{root.name} run {index + 1}: {total:.1f} s; " +
          ", ".join(f"{s} {v['wall']:.1f}" for s, v in stages.items()), flush=True)
    return {"total": total, "stages": stages, "test_accuracy": accuracies(root)}


def exp_run_seconds(roots: list[Path], setting: str, new_value, changes: int) -> dict[Path, list[float]]:
    """Seconds of each `dvc exp run -S setting=...` in each checkout, in turns (ABBA), alternating
    `new_value` and the committed value (an even number of runs: the last puts it back)."""
    import yaml
    section, key = setting.split(".")
    committed = {root: git(root, "show", "HEAD:params.yaml") for root in roots}
    committed_value = {root: yaml.safe_load(text)[section][key] for root, text in committed.items()}
    names, seconds = {root: [] for root in roots}, {root: [] for root in roots}
    try:
        for i in range(changes):
            for root in (roots if i % 2 == 0 else roots[::-1]):  # neither checkout always goes first
                value = new_value if i % 2 == 0 else committed_value[root]
                names[root].append(f"bench-loop-{os.getpid()}-{root.name}-{section}-{i}")
                start = time.perf_counter()
                run = subprocess.run(["dvc", "exp", "run", "--name", names[root][-1], "-S", f"{setting}={value}"],
                                     cwd=root, env=checkout_env(root), capture_output=True, text=True)
                seconds[root].append(time.perf_counter() - start)
                if run.returncode != 0:
                    sys.exit(f"{root}: dvc exp run -S {setting}={value} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    finally:
        for root in roots:
            (root / "params.yaml").write_text(committed[root])  # as committed: `-S` rewrites the file's form
            subprocess.run(["dvc", "exp", "remove", *names[root]], cwd=root, capture_output=True)
    return seconds


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


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


LOOP = {"one-model change": ("lenet.lr", 0.02), "report-only change": ("report.title", "x")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=4, help="runs of each loop change (0: skip the loop)")
    parser.add_argument("--name", default="pipeline", help="results file name under benchmarks/results/")
    parser.add_argument("--baseline", help="the report to guard against: measured now in --against's checkout, "
                                           "or a committed one under benchmarks/results/ measured on this machine")
    parser.add_argument("--against", type=Path, help="a checkout of the baseline's commit, measured in turns with this one")
    args = parser.parse_args()
    if args.changes % 2:
        parser.error("--changes must be even: every other run puts params.yaml's value back")
    if args.against and args.baseline in (None, args.name):
        parser.error("--against needs --baseline NAME, not --name's: the report its figures are written to")
    roots = [ROOT] + ([args.against.resolve()] if args.against else [])
    for root in roots:
        if git(root, "status", "--porcelain", "params.yaml"):
            sys.exit(f"{root / 'params.yaml'}: differs from the commit; commit or restore it first "
                     f"(the benchmark puts the committed file back)")
    runs = {root: [] for root in roots}
    for i in range(args.runs):
        for root in (roots if i % 2 == 0 else roots[::-1]):  # in turns (ABBA): the machine's speed drifts
            runs[root].append(one_run(root, i))
    loops = {root: {} for root in roots}
    for label, (setting, value) in LOOP.items() if args.changes else ():
        for root, seconds in exp_run_seconds(roots, setting, value, args.changes).items():
            loops[root][label] = (f"dvc exp run -S {setting}={value}", seconds)
    from cnnlab.runtime import device_name, environment
    import torch
    env = environment(torch.device("cpu"), 0)
    import datetime
    command = " ".join(["python benchmarks/pipeline.py", f"--runs {args.runs}", f"--changes {args.changes}"]
                       + ([f"--baseline {args.baseline}"] if args.baseline else [])
                       + ([f"--against {os.path.relpath(args.against, ROOT)}"] if args.against else []))
    header = (f"# Pipeline time, {device_name(torch.device('cpu'))}, {env['threads']} threads, "
              f"torch {env['torch']}\n\nMeasured {datetime.date.today()} by `{command}`")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    if args.against:
        write_report(out, args.baseline, env, runs[roots[1]], loops[roots[1]],
                     header + f", at commit {commit(roots[1])} (a second checkout), in turns with {commit(ROOT)}.\n\n")
        baseline = (args.baseline, medians(runs[roots[1]], loops[roots[1]]))
    else:
        baseline = (args.baseline, medians(*read_report(args.baseline))) if args.baseline else None
    print(write_report(out, args.name, env, runs[ROOT], loops[ROOT], header + f", at commit {commit(ROOT)}.\n\n",
                       baseline))


def commit(root: Path) -> str:
    return git(root, "rev-parse", "--short", "HEAD").strip()


def write_report(out: Path, name: str, env: dict, runs: list[dict], loop: dict, header: str,
                 baseline: tuple[str, dict] | None = None) -> str:
    """<name>.json (every number) and <name>.md (the tables); the markdown."""
    (out / f"{name}.json").write_text(json.dumps(
        {"env": env, "runs": runs, "loop": {k: {"command": c, "seconds": s} for k, (c, s) in loop.items()}},
        indent=2) + "\n")
    text = header + table(runs, loop, baseline)
    (out / f"{name}.md").write_text(text)
    return text


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
