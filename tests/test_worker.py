"""cluster/worker.sh says truthfully what reached the remotes: "pushed" and exit 0 only when origin
holds its experiment's ref and the DVC remote its outputs; otherwise one line naming the cause and the
fix, exit 1, and the clone kept. Run for real against a bare git origin and a folder DVC remote, on a
one-stage project (the worker is the same for any pipeline; cnnlab's would only make this slow)."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

WORKER = REPO / "cluster" / "worker.sh"
STAGE = """stages:
  make:
    cmd: python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['x'])" > out.txt
    params: [x]
    outs: [out.txt]
"""


def sh(cwd: Path, env: dict, *command: str) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
    return result.stdout


@pytest.fixture
def project(tmp_path):
    """(origin URL, DVC remote folder, environment, work folder): origin's main has run once and pushed."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "CNNLAB_WORK_DIR": str(tmp_path / "work")}
    origin, store, source = tmp_path / "origin.git", tmp_path / "store", tmp_path / "source"
    (tmp_path / "work").mkdir()
    source.mkdir()
    sh(tmp_path, env, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    (source / "dvc.yaml").write_text(STAGE)
    (source / "params.yaml").write_text("x: 1\n")
    for command in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"],
                    ["dvc", "remote", "add", "-q", "-d", "store", str(store)], ["dvc", "repro", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "run"], ["git", "push", "-q", str(origin), "main"],
                    ["dvc", "push", "-q", "--run-cache"]):
        sh(source, env, *command)
    return str(origin), store, env, tmp_path / "work"


def worker(project, name: str, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    origin, _, env, _ = project
    env = {**env, "CNNLAB_EXP_NAME": name, **({"PATH": path} if path else {})}
    return subprocess.run(["bash", str(WORKER), origin, *args], env=env, capture_output=True, text=True, timeout=300)


def last_line(result) -> str:
    return (result.stdout + result.stderr).strip().splitlines()[-1]


def pushed_ref(project, name: str) -> str:
    origin, _, env, _ = project
    return sh(Path(origin), env, "git", "for-each-ref", "--format=%(refname)", f"refs/exps/**/{name}").strip()


def stored(store: Path, text: str) -> Path:
    digest = hashlib.md5(text.encode()).hexdigest()
    return store / "files" / "md5" / digest[:2] / digest[2:]


def test_a_pushed_run_is_on_both_remotes_and_its_clone_is_gone(project):
    _, store, _, work = project
    result = worker(project, "two", "-S", "x=2")  # no `--`: -S is an override, not a revision
    assert result.returncode == 0, result.stdout + result.stderr
    assert last_line(result).startswith("worker two: pushed;") and "overrides: -S x=2" in result.stdout
    assert pushed_ref(project, "two") and stored(store, "2\n").is_file()
    assert list(work.iterdir()) == []


def test_a_name_origin_already_holds_is_refused_before_any_work(project):
    _, store, _, work = project
    assert worker(project, "same", "--", "-S", "x=3").returncode == 0
    result = worker(project, "same", "--", "-S", "x=4")
    assert result.returncode == 1 and "pushed" not in result.stdout, result.stdout + result.stderr
    assert "origin already holds an experiment named same" in result.stderr
    assert not stored(store, "4\n").exists() and len(list(work.iterdir())) == 1


def test_a_name_another_job_pushed_meanwhile_is_not_called_pushed(project, tmp_path):
    """The other job pushes between this one's check and its push: `dvc exp push` says "diverged ...
    No experiments to push" with exit 0; the worker compares origin's ref with its own."""
    origin, _, env, work = project
    racer = tmp_path / "bin"
    racer.mkdir()
    real = shutil.which("dvc", path=env["PATH"])
    (racer / "dvc").write_text(f"""#!/bin/sh
"{real}" "$@" || exit $?
if [ "$1 $2" = "exp run" ]; then
    head=$(git rev-parse HEAD); theirs=$(git commit-tree -p HEAD -m "the other job's run" "HEAD^{{tree}}")
    git push -q {origin} "$theirs:refs/exps/$(echo $head | cut -c1-2)/$(echo $head | cut -c3-)/raced"
fi
""")
    (racer / "dvc").chmod(0o755)
    result = worker(project, "raced", "--", "-S", "x=5", path=f"{racer}{os.pathsep}{env['PATH']}")
    assert result.returncode == 1 and "pushed;" not in result.stdout, result.stdout + result.stderr
    assert "origin holds another experiment named raced" in result.stderr and "--force" in result.stderr
    kept = last_line(result).removeprefix("worker raced: kept the clone ")
    assert (Path(kept) / "out.txt").read_text() == "5\n" and Path(kept).parent.parent == work


def test_outputs_that_do_not_reach_the_dvc_remote_push_no_ref_and_keep_the_clone(project):
    _, store, _, work = project
    blocked = stored(store, "6\n").parent
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the remote needs a folder: the upload of this output fails")
    result = worker(project, "blocked", "--", "-S", "x=6")
    assert result.returncode == 1 and "pushed;" not in result.stdout, result.stdout + result.stderr
    assert "the outputs did not reach the DVC remote (" in result.stderr and "Not a directory" in result.stderr
    assert not pushed_ref(project, "blocked") and len(list(work.iterdir())) == 1


def test_a_failing_pull_stops_before_the_run(project):
    _, store, _, work = project
    shutil.rmtree(store)
    store.write_text("not a folder")
    result = worker(project, "nopull", "--", "-S", "x=7")
    assert result.returncode == 1 and "dvc pull from the DVC remote failed (ERROR: " in result.stderr, result.stderr
    assert "nothing to pull" not in result.stdout + result.stderr and "Running stage" not in result.stdout
    assert "kept the clone" in last_line(result)


def test_dvc_missing_from_path_is_one_line(project):
    git = Path(shutil.which("git")).parent
    result = worker(project, "nodvc", "--", "-S", "x=8", path=f"{git}{os.pathsep}/bin")
    assert shutil.which("dvc", path=f"{git}{os.pathsep}/bin") is None
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "worker nodvc: dvc is not on PATH; activate the project's environment first (e.g. source "
        ".venv/bin/activate, or the image or module that has it)"]
