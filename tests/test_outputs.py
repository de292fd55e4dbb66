import pytest

from cnnlab.stage import outputs as staged_outputs


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
