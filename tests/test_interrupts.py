"""Interruptions where they hurt most: inside the commit of a stage's outputs, twice in a row (a SIGTERM
to the whole process group), and before the stage's run() has started (while it imports torch)."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnnlab.plumbing.outputs import TEMPORARY_PREFIX, StagedOutputs

REPO = Path(__file__).resolve().parents[1]
OLD = {"report/index.md": "old report", "report/figures/a.png": "old a", "report/figures/b.png": "old b",
       "metrics/scores.json": "old scores"}
NEW = {"report/index.md": "new report", "report/figures/a.png": "new a", "report/figures/c.png": "new c",
       "metrics/scores.json": "new scores", "metrics/fresh.json": "new fresh"}


def contents(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


def stage_new_outputs(root: Path) -> StagedOutputs:
    """The OLD outputs in place, the NEW ones staged: two files replacing old ones, one new file with
    no previous version, and a folder replacing a folder."""
    for name, text in OLD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    staged = StagedOutputs()
    staged.text(root / "report/index.md", NEW["report/index.md"])
    figures = staged.path(root / "report/figures")
    figures.mkdir()
    for name in ("a.png", "c.png"):
        (figures / name).write_text(NEW[f"report/figures/{name}"])
    staged.text(root / "metrics/scores.json", NEW["metrics/scores.json"])
    staged.text(root / "metrics/fresh.json", NEW["metrics/fresh.json"])
    return staged


class Interrupter:
    """os.replace and shutil.rmtree counted; the k-th call raises KeyboardInterrupt, before or after
    doing its work."""

    def __init__(self, monkeypatch, k: int, after: bool) -> None:
        self.calls, self.k, self.after = 0, k, after
        for module, name in ((os, "replace"), (shutil, "rmtree")):
            monkeypatch.setattr(module, name, self.counted(getattr(module, name)))

    def counted(self, real):
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.k and not self.after:
                raise KeyboardInterrupt
            real(*args, **kwargs)
            if self.calls == self.k:
                raise KeyboardInterrupt
        return call


def test_a_ctrl_c_anywhere_inside_commit_leaves_all_old_or_all_new(tmp_path, monkeypatch):
    counting = tmp_path / "count"
    with monkeypatch.context() as patched:
        counter = Interrupter(patched, k=0, after=False)
        stage_new_outputs(counting).commit()
    assert contents(counting) == NEW
    outcomes = set()
    for after in (False, True):
        for k in range(1, counter.calls + 1):
            root = tmp_path / f"{k}-{after}"
            staged = stage_new_outputs(root)
            with monkeypatch.context() as patched:
                Interrupter(patched, k, after)
                with pytest.raises(KeyboardInterrupt):
                    staged.commit()
            found = contents(root)
            assert found in (OLD, NEW), (k, after, found)
            assert not list(root.rglob(f"{TEMPORARY_PREFIX}*")), (k, after)
            outcomes.add("new" if found == NEW else "old")
    assert outcomes == {"old", "new"}  # interrupted renames roll back; an interrupted clean-up keeps the new


def test_a_signal_during_commit_waits_until_it_is_done(tmp_path, monkeypatch):
    """A real SIGINT sent in the middle of the renames is held back: the commit completes, then the
    interruption arrives."""
    staged = stage_new_outputs(tmp_path)
    real_replace = os.replace

    def replace_and_signal(*args):
        real_replace(*args)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_and_signal)
    with pytest.raises(KeyboardInterrupt):
        staged.commit()
    assert contents(tmp_path) == NEW
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_main_thread_handlers_a_commit_still_rolls_back(tmp_path, monkeypatch):
    """Outside the main thread (and where signals cannot be held) an interruption rolls back."""
    import threading
    staged = stage_new_outputs(tmp_path)
    monkeypatch.setattr(threading, "main_thread", lambda: None)
    with monkeypatch.context() as patched:
        Interrupter(patched, k=3, after=True)
        with pytest.raises(KeyboardInterrupt):
            staged.commit()
    assert contents(tmp_path) == OLD


STAGE = textwrap.dedent("""
    import os, shutil, signal, sys, time
    from pathlib import Path
    from cnnlab.plumbing import stage

    def main():
        with stage.outputs() as out:
            out.text("metrics/scores.json", "new")
            folder = out.path("plots/compare/figures")
            folder.mkdir()
            (folder / "a.png").write_text("new")
            if sys.argv[1] == "signal-inside-cleanup":  # the second SIGTERM lands inside the clean-up
                real = shutil.rmtree
                def rmtree(*args, **kwargs):
                    os.kill(os.getpid(), signal.SIGTERM)
                    real(*args, **kwargs)
                shutil.rmtree = rmtree
                os.kill(os.getpid(), signal.SIGTERM)
            print("staged", flush=True)
            time.sleep(60)

    if __name__ == "__main__":
        stage.run(main, sweep=False)
""")


def old_project(tmp_path: Path) -> Path:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/scores.json").write_text("old")
    (tmp_path / "plots/compare/figures").mkdir(parents=True)
    (tmp_path / "plots/compare/figures/a.png").write_text("old")
    (tmp_path / "stage.py").write_text(STAGE)
    return tmp_path


def start(project: Path, how: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "stage.py", how], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="no process groups")
def test_sigterm_to_the_process_group_twice_leaves_the_old_outputs(tmp_path):
    """What scancel and kubectl do: SIGTERM to every process of the group, which reaches a stage twice
    (the second from dvc or its parent's death, at once)."""
    project = old_project(tmp_path)
    process = start(project, "wait")
    assert process.stdout.readline() == "staged\n"
    os.killpg(process.pid, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == "error: interrupted\n"
    assert contents(project / "metrics") == {"scores.json": "old"}
    assert contents(project / "plots") == {"compare/figures/a.png": "old"}


def test_a_second_sigterm_inside_the_clean_up_does_not_break_it(tmp_path):
    project = old_project(tmp_path)
    process = start(project, "signal-inside-cleanup")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == "error: interrupted\n"
    assert not list(project.rglob(f"{TEMPORARY_PREFIX}*"))
    assert contents(project / "plots") == {"compare/figures/a.png": "old"}


def test_ctrl_c_while_a_stage_script_imports_is_one_line(tmp_path):
    """Ctrl-C before the stage's run() (its imports: torch's take seconds) is the same one line and
    exit code 130 as after, not a traceback."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "slow_import.py").write_text("import time\nprint('importing', flush=True)\ntime.sleep(60)\n")
    (tmp_path / "stages/train.py").write_text("from cnnlab.plumbing import stage\nimport slow_import\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(tmp_path)])}
    process = subprocess.Popen([sys.executable, "stages/train.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "importing\n"
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (130, "error: interrupted\n")


def test_a_library_user_keeps_its_own_ctrl_c():
    """Importing cnnlab's plumbing outside a stage script (a test, a notebook) changes no handler."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
