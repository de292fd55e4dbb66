import json
from pathlib import Path

import pytest

from cnnlab.plumbing.stage import outputs as staged_outputs


def test_outputs_appear_only_when_the_stage_succeeds(tmp_path):
    target = tmp_path / "metrics" / "m.json"
    with staged_outputs() as out:
        out.json(target, {"accuracy": 1})
        assert not target.exists()
    assert target.read_text().startswith("{")
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]


def test_a_failing_stage_leaves_old_outputs_and_no_temporaries(tmp_path):
    kept = tmp_path / "a.txt"
    kept.write_text("old")
    with pytest.raises(RuntimeError):
        with staged_outputs() as out:
            out.text(kept, "new")
            out.text(tmp_path / "b.txt", "new")
            raise RuntimeError("boom")
    assert kept.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_directories_are_replaced_whole(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "stale").write_text("x")
    with staged_outputs() as out:
        staged = out.path(folder)
        staged.mkdir()
        (staged / "fresh").write_text("y")
    assert [p.name for p in folder.iterdir()] == ["fresh"]


def test_a_write_failure_is_one_line_naming_the_output_and_the_fix(tmp_path, monkeypatch, capsys):
    """A full disk, a read-only folder: one line naming the output (not its hidden temporary), the
    cause and the fix; exit 1; nothing half-written; the earlier output kept."""
    import errno
    import json as json_module

    from cnnlab.plumbing import stage
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "old.json").write_text("{}")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", args[1].name)

    def main():
        with stage.outputs() as out:
            out.text("metrics/a.txt", "first")
            monkeypatch.setattr(json_module, "dump", lambda data, stream, **kw: full_disk(data, stream))
            out.json("metrics/old.json", {"new": 1})

    with pytest.raises(SystemExit) as exit_code:
        stage.run(main, sweep=False)
    assert exit_code.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line == ("error: metrics/old.json: No space left on device; free some space (dvc gc -w removes "
                    "cache entries no longer used) and rerun"), line
    assert (tmp_path / "metrics" / "old.json").read_text() == "{}" and not (tmp_path / "metrics" / "a.txt").exists()
    assert [p.name for p in (tmp_path / "metrics").iterdir()] == ["old.json"]


def test_a_checkpoint_cut_short_by_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):

    from cnnlab.plumbing import stage
    monkeypatch.chdir(tmp_path)

    def main():
        with stage.outputs() as out:
            path = out.path("models/lenet.pt")
            path.parent.mkdir(parents=True, exist_ok=True)
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2048 vs 1984")

    with pytest.raises(SystemExit):
        stage.run(main, sweep=False)
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: models/lenet.pt: could not write a checkpoint (is the disk full?); free some"), line
    assert not list(tmp_path.rglob("*.pt"))


def test_a_stage_script_ends_when_its_outputs_are_in_place(tmp_path):
    """A stage script's process ends as soon as main returns: its output committed, its printed line
    flushed, exit code 0, and no interpreter teardown (an atexit handler never runs)."""
    import subprocess
    import sys
    script = tmp_path / "stage_script.py"
    script.write_text(
        "import atexit, pathlib\n"
        "from cnnlab.plumbing import stage\n"
        "atexit.register(lambda: pathlib.Path('teardown').write_text('ran'))\n"
        "def main():\n"
        "    with stage.outputs() as out:\n"
        "        out.text('metrics/done.txt', 'yes')\n"
        "    print('stage: done', end='')\n"
        "if __name__ == '__main__':\n"
        "    stage.run(main, sweep=False)\n")
    ended = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout == "stage: done"
    assert (tmp_path / "metrics" / "done.txt").read_text() == "yes"
    assert not (tmp_path / "teardown").exists()
    # under a profiler the process lives on: its report is written after the script returns
    profiled = subprocess.run([sys.executable, "-m", "cProfile", "-o", "stage.prof", str(script)], cwd=tmp_path,
                              capture_output=True, text=True)
    assert profiled.returncode == 0, profiled.stderr
    assert (tmp_path / "stage.prof").stat().st_size > 0 and (tmp_path / "teardown").read_text() == "ran"


def test_run_called_in_process_returns(tmp_path, monkeypatch):
    """`stage.run` with a main that is not the running script's (a test, a notebook) returns."""
    from cnnlab.plumbing import stage
    monkeypatch.chdir(tmp_path)

    def main():
        with stage.outputs() as out:
            out.text("done.txt", "yes")

    stage.run(main, sweep=False)
    assert (tmp_path / "done.txt").read_text() == "yes"


def test_a_stage_whose_parent_is_init_from_the_start_runs(monkeypatch):
    """Under a container's init (PID 1 as the parent all along) a stage runs; a stage whose parent
    died before it asked to follow it (handed over to init since it started) stops as interrupted."""
    from cnnlab.plumbing import stage
    monkeypatch.setattr(stage.os, "getppid", lambda: 1)
    monkeypatch.setattr(stage, "PARENT_AT_START", 1)
    stage._end_with_parent()  # runs on
    monkeypatch.setattr(stage, "PARENT_AT_START", 4321)
    with pytest.raises(KeyboardInterrupt):
        stage._end_with_parent()


NOISE = {"plot": {"title": "accuracy under noise", "x": "noise", "y": "accuracy",
                  "curves": {"cnn": {"x": [0, 0.1], "y": [0.99, 0.9]}}}}


def _draw_noise(target, data=NOISE, dpi=40, draw=None) -> bool:
    from cnnlab.figures import comparison_figure
    with staged_outputs() as out:
        return out.figure_of(target, draw or comparison_figure, data, dpi=dpi)


def test_a_figure_of_unchanged_data_is_kept_as_it_is_without_drawing(tmp_path):
    import functools
    from PIL import Image
    from cnnlab.plumbing.outputs import DRAWN_FROM, drawn_from, figure_digest
    from cnnlab.figures import comparison_figure
    target = tmp_path / "report" / "noise.png"
    assert _draw_noise(target)
    first = target.read_bytes()
    assert drawn_from(target) == figure_digest(comparison_figure, NOISE, 40)

    @functools.wraps(comparison_figure)  # the same drawing function, as far as the digest can tell
    def never(**_):
        raise AssertionError("redrawn although its data did not change")
    assert not _draw_noise(target, draw=never)
    assert target.read_bytes() == first
    assert [p.name for p in target.parent.iterdir()] == ["noise.png"]  # no temporaries left

    changed = {"plot": {**NOISE["plot"], "curves": {**NOISE["plot"]["curves"], "mlp": {"x": [0, 0.1], "y": [0.98, 0.5]}}}}
    assert _draw_noise(target, changed) and target.read_bytes() != first
    assert _draw_noise(target, changed, dpi=50)  # another resolution is another figure
    reordered = {"plot": {**changed["plot"], "curves": dict(reversed(changed["plot"]["curves"].items()))}}  # colours follow the order
    assert _draw_noise(target, reordered, dpi=50)
    with Image.open(target) as image:
        assert DRAWN_FROM in image.text and image.size[0] > 0


def test_a_figure_is_redrawn_over_a_foreign_corrupt_or_missing_file(tmp_path):
    from PIL import Image
    target = tmp_path / "noise.png"
    Image.new("RGB", (4, 4)).save(target)  # a PNG cnnlab did not draw: no digest
    assert _draw_noise(target)
    target.write_bytes(b"not a png")
    assert _draw_noise(target)
    target.unlink()
    assert _draw_noise(target) and target.stat().st_size > 1000


def test_a_figure_digest_follows_the_drawing_code(tmp_path, monkeypatch):
    import sys
    from cnnlab import figures
    from cnnlab.plumbing.outputs import figure_digest
    before = figure_digest(figures.comparison_figure, NOISE, 40)
    assert figure_digest(figures.curves_figure, NOISE, 40) != before
    edited = tmp_path / "figures.py"
    edited.write_text(Path(figures.__file__).read_text() + "\n# edited\n")
    monkeypatch.setattr(sys.modules["cnnlab.figures"], "__file__", str(edited))
    assert figure_digest(figures.comparison_figure, NOISE, 40) != before


def test_a_figure_digest_follows_the_saving_code_and_the_matplotlibrc(tmp_path, monkeypatch):
    from cnnlab import figures
    from cnnlab.plumbing import outputs
    from cnnlab.plumbing.outputs import figure_digest
    monkeypatch.chdir(tmp_path)
    before = figure_digest(figures.comparison_figure, NOISE, 40)
    (tmp_path / "matplotlibrc").write_text("lines.linewidth: 5\n")  # matplotlib reads it from the working folder
    assert figure_digest(figures.comparison_figure, NOISE, 40) != before
    (tmp_path / "matplotlibrc").unlink()
    assert figure_digest(figures.comparison_figure, NOISE, 40) == before
    edited = tmp_path / "outputs.py"
    edited.write_text(Path(outputs.__file__).read_text() + "\n# figure() edited\n")
    monkeypatch.setattr(outputs, "__file__", str(edited))
    assert figure_digest(figures.comparison_figure, NOISE, 40) != before


def test_a_foreign_png_with_a_copied_digest_is_redrawn(tmp_path):
    from PIL import Image, PngImagePlugin
    target = tmp_path / "noise.png"
    assert _draw_noise(target)
    with Image.open(target) as drawn:
        copied, size = dict(drawn.text), drawn.size
    for keys in (copied, {k: v for k, v in copied.items() if "pixels" not in k}):
        info = PngImagePlugin.PngInfo()
        for key, value in keys.items():
            info.add_text(key, value)
        Image.new("RGBA", size, (255, 0, 0, 255)).save(target, pnginfo=info)
        assert _draw_noise(target), keys.keys()
    assert not _draw_noise(target)  # its own drawing, untouched, is kept


def test_keeping_a_figure_imports_no_matplotlib(tmp_path):
    import subprocess
    import sys
    import textwrap
    target = tmp_path / "noise.png"
    assert _draw_noise(target)
    code = textwrap.dedent(f"""
        import json, sys
        from cnnlab.plumbing.stage import outputs
        from cnnlab.figures import comparison_figure
        with outputs() as out:
            drew = out.figure_of({str(target)!r}, comparison_figure, json.loads({json.dumps(NOISE)!r}), dpi=40)
        print(drew, "matplotlib" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"], result.stderr
