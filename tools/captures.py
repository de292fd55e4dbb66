"""The tutorial's expected output, captured from a real run: never typed.

    python tools/captures.py            # run every tutorial page's commands in a copy of the project, rewrite
    python tools/captures.py --check    # exit 1 naming the page if a captured block is stale (a test runs this)

A captured block lives between `<!-- capture: NAME -->` and `<!-- /capture -->` in docs/tutorial/*.md
and docs/python.md: a console block whose `$ ` lines are the commands, or a Python program. Without
--check, the pages run in order in one copy of the project (its tracked files, a git repository of its
own, params.yaml made small: SMALL below) on the data CNNLAB_DATA_MIRROR serves (or the download), each
block's commands in one bash from the project's root; the transcript goes to docs/captures/ (a JSON file
named after the block) with the seconds it took and the CPU, and into the page. --check runs nothing:
each block must be what its capture file renders.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs" / "tutorial").glob("*.md")), ROOT / "docs" / "python.md"]  # in running order
CAPTURES = ROOT / "docs" / "captures"
BLOCK = re.compile(r"(<!-- capture: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /capture -->)", re.S)
SMALL = {"prepare": {"train_size": 3000},
         "train": {"epochs": 2, "progress": False},
         "analyze": {"tsne_samples": 300, "explain_samples": 8}}
OUTPUTS = ("dvc.lock", "metrics/", "plots/", "report/", "data/raw", "data/prepared", "models/")
REMOTE = Path("/tmp/cnnlab-store")  # the folder remote the sharing page names
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or platform.machine()


def commands(body: str) -> list[str]:
    """A console block's `$ ` lines, or a Python block's whole program (one entry)."""
    program = re.match(r"```python\n(.*?)```", body, re.S)
    if program:
        return [program.group(1)]
    return [line[2:] for line in body.splitlines() if line.startswith("$ ")]


def render(capture: dict) -> str:
    if capture.get("language") == "python":
        shown = f"```python\n{capture['commands'][0]}```\n\nIt prints:\n\n```text\n{capture['transcript']}```\n"
    else:
        shown = f"```console\n{capture['transcript']}```\n"
    busy = f" (shared: load average {capture['load']:.1f})" if capture["load"] > capture["cores"] else ""
    return (f"{shown}\n*Captured by `tools/captures.py` in {capture['seconds']:.0f} s on {capture['cpu']}{busy}, "
            f"in a copy of the project with {capture['params']}.*\n")


def small_params() -> str:
    return ", ".join(f"`{section}.{key}: {value}`".replace("True", "true").replace("False", "false")
                     for section, values in SMALL.items() for key, value in values.items())


def blocks() -> list[tuple[Path, str, str]]:
    """(page, block name, block body) in reading order."""
    return [(page, m.group("name"), m.group("body")) for page in PAGES
            for m in BLOCK.finditer(page.read_text())]


def check() -> list[str]:
    stale = []
    for page, name, body in blocks():
        file = CAPTURES / f"{name}.json"
        if not file.exists():
            stale.append(f"{page.name}: {name} (no {file.relative_to(ROOT)})")
        elif render(json.loads(file.read_text())) != body:
            stale.append(f"{page.name}: {name}")
    return stale


# The project copy ---------------------------------------------------------------------------------------

def copy_project(project: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if not name.startswith(OUTPUTS) and not name.startswith("docs/") and (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    (project / ".venv").symlink_to(sys.prefix)  # what `make setup` would install
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def environment(project: Path) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(project / "src"), "DVC_NO_ANALYTICS": "1", "COLUMNS": "160", "TERM": "dumb",
            "GIT_AUTHOR_NAME": "you", "GIT_AUTHOR_EMAIL": "you@example.com", "GIT_COMMITTER_NAME": "you",
            "GIT_COMMITTER_EMAIL": "you@example.com", "OMP_NUM_THREADS": str(min(os.cpu_count() or 1, 4))}


def run_block(project: Path, name: str, body: str, root: Path) -> dict:
    python = body.startswith("```python")
    script = "".join(f"printf '%s\\n' {shlex.quote('$ ' + c)}\n{c} 2>&1 || exit $?\n" for c in commands(body))
    started, load = time.perf_counter(), os.getloadavg()[0]
    result = subprocess.run([sys.executable, "-c", commands(body)[0]] if python else ["bash", "-c", script],
                            cwd=project, env=environment(project), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    transcript = ANSI.sub("", result.stdout + result.stderr).replace(str(root), "~")
    if os.environ.get("CNNLAB_DATA_MIRROR"):
        transcript = transcript.replace(os.environ["CNNLAB_DATA_MIRROR"].rstrip("/"), "$CNNLAB_DATA_MIRROR")
    transcript = "\n".join(line.rstrip() for line in transcript.splitlines() if "\r" not in line) + "\n"
    if result.returncode:
        sys.exit(f"error: capture {name} failed with exit {result.returncode}:\n{transcript[-3000:]}")
    return {"language": "python" if python else "console", "commands": commands(body), "transcript": transcript,
            "seconds": seconds, "cpu": cpu(), "cores": os.cpu_count(), "load": load, "params": small_params()}


def capture_all() -> None:
    CAPTURES.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(REMOTE, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="cnnlab-captures-") as tmp:
        root = Path(tmp)
        project = root / "cnnlab"
        copy_project(project)
        env = environment(project)
        for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "cnnlab"]):
            subprocess.run(command, cwd=project, env=env, check=True)
        for page, name, body in blocks():
            print(f"capturing {name} ({page.name})", flush=True)
            found = run_block(project, name, body, root)
            (CAPTURES / f"{name}.json").write_text(json.dumps(found, indent=1) + "\n")
            text = page.read_text()
            page.write_text(text.replace(f"<!-- capture: {name} -->\n{body}",
                                         f"<!-- capture: {name} -->\n{render(found)}"))
    shutil.rmtree(REMOTE, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a captured block is stale; run nothing")
    if parser.parse_args().check:
        stale = check()
        if stale:
            print(f"stale captures: {'; '.join(stale)}; run python tools/captures.py", file=sys.stderr)
            return 1
        print(f"every captured block is up to date ({len(blocks())} blocks)")
        return 0
    capture_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
