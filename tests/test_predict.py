"""Using a trained model afterwards: predict on image files and folders, and export to TorchScript."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, synthetic_digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet trained on synthetic digits, saved as the train stage saves it, and a folder of
    test images written as PNG files (their true classes in the file names)."""
    from PIL import Image
    from cnnlab.engine.checkpoints import checkpoint
    from cnnlab.models import build
    from cnnlab.prepare import channel_stats
    from cnnlab.runtime import seed_everything
    from cnnlab.train.loop import fit
    from test_train import CFG, splits
    tmp = tmp_path_factory.mktemp("predict")
    train, val = splits(n_train=600)
    model = build("lenet", 1, 10, 28)
    fit(model, train, val, {**CFG, "epochs": 4}, seed_everything(0))
    mean, std = channel_stats(train.images)
    info = {"channels": 1, "classes": [f"pos{i}" for i in range(10)], "image_size": 28, "mean": mean, "std": std}
    torch.save(checkpoint("lenet", model, {}, info), tmp / "lenet.pt")
    images, labels = synthetic_digits(30, seed=7)
    folder = tmp / "images" / "nested"
    folder.mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(folder / f"{i:02d}-pos{label}.png")
    (tmp / "images" / "notes.txt").write_text("not an image, and not an image suffix: skipped in folders")
    return tmp


def test_predict_reads_files_and_folders_and_ranks_the_classes(trained):
    from cnnlab.predict import predict
    results = predict(trained / "lenet.pt", [str(trained / "images")], top_k=3)
    assert len(results) == 30
    right = sum(best[0][0] == path.stem.split("-")[1] for path, best in results)
    assert right >= 27, right
    for _, best in results:
        probabilities = [p for _, p in best]
        assert len(best) == 3 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    one = predict(trained / "lenet.pt", [str(results[0][0])], top_k=1)
    assert one == [(results[0][0], results[0][1][:1])]


def test_colour_and_odd_sized_images_go_through_the_training_preprocessing(trained, tmp_path):
    from PIL import Image
    from cnnlab.predict import load_images
    Image.new("RGB", (50, 40), (255, 255, 255)).save(tmp_path / "white.jpg")
    images = load_images([tmp_path / "white.jpg"], channels=1, size=28)
    assert images.shape == (1, 1, 28, 28) and images.dtype == torch.uint8 and images.float().mean() > 250


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "cnnlab.predict", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_command_line_prints_one_line_per_image_and_one_line_per_error(trained, tmp_path):
    result = cli(trained / "lenet.pt", trained / "images", "--top-k", "2")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 30 and lines[0].count("%") == 2, result.stderr
    (tmp_path / "fake.png").write_text("text")
    for args, fragment in (((trained / "lenet.pt", tmp_path / "fake.png"), "fake.png: unreadable image"),
                           ((trained / "lenet.pt", tmp_path / "nothing"), "nothing: no such file or folder"),
                           ((trained / "images" / "notes.txt", trained / "images"), "not a cnnlab checkpoint")):
        result = cli(*args)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def test_export_writes_a_program_that_matches_the_model(trained, tmp_path):
    from cnnlab.engine.checkpoints import load_checkpoint
    result = cli(trained / "lenet.pt", "--export", tmp_path / "lenet.pt2")
    assert result.returncode == 0 and "exported" in result.stdout, result.stderr
    scripted = torch.export.load(str(tmp_path / "lenet.pt2")).module()
    model, _ = load_checkpoint(trained / "lenet.pt", torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 1, 28, 28)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_export_to_a_folder_or_an_unwritable_place_is_one_line(trained, tmp_path):
    (tmp_path / "taken.pt2").mkdir()
    for target, fragment in ((tmp_path / "taken.pt2", "Is a directory; a folder stands where a file is needed"),
                             (Path("/proc/cnnlab-test.pt2"), "/proc/cnnlab-test.pt2: ")):
        result = cli(trained / "lenet.pt", "--export", str(target))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert fragment in lines[0] and ".cnnlab-tmp" not in lines[0], lines[0]


def test_export_over_the_checkpoint_itself_is_refused_and_leaves_it_whole(trained, tmp_path):
    import shutil
    checkpoint = tmp_path / "lenet.pt"
    shutil.copy(trained / "lenet.pt", checkpoint)
    before = checkpoint.read_bytes()
    for target in (checkpoint, tmp_path / "." / "lenet.pt"):
        result = cli(checkpoint, "--export", target)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "is the checkpoint itself" in lines[0] and "export to another file" in lines[0], lines[0]
    assert checkpoint.read_bytes() == before


def test_a_folder_as_checkpoint_is_called_a_folder(trained):
    result = cli(trained / "images", trained / "images")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "images: a folder, not a checkpoint" in result.stderr and "missing" not in result.stderr


def test_an_image_under_8x8_is_refused_as_download_refuses_it(trained, tmp_path):
    from PIL import Image
    Image.new("L", (1, 1), 0).save(tmp_path / "dot.png")
    result = cli(trained / "lenet.pt", tmp_path / "dot.png")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "dot.png: too small to learn from (1x1 pixels, smaller than 8x8)" in result.stderr


def test_a_name_with_a_newline_is_printed_on_one_line(trained, tmp_path):
    import shutil
    shutil.copy(next((trained / "images" / "nested").glob("*.png")), tmp_path / "two\nlines.png")
    result = cli(trained / "lenet.pt", tmp_path / "two\nlines.png")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 1 and "two\\nlines.png: " in lines[0], result.stdout


def test_export_pngs_writes_each_asked_class_and_names_an_unknown_class(tmp_path):
    from PIL import Image
    from cnnlab import CnnlabError
    from cnnlab.prepare import save_prepared
    from cnnlab.export_pngs import write_pngs
    images, labels = synthetic_digits(40, seed=3)
    split = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())
    info = {"classes": [str(i) for i in range(10)]}
    save_prepared({"train": split, "val": split, "test": split, "info": info}, tmp_path / "prepared")
    written = write_pngs(tmp_path / "digits", "test", ["2", "7"], 2, prepared=tmp_path / "prepared")
    assert written == {"2": min(2, int((labels == 2).sum())), "7": min(2, int((labels == 7).sum()))}
    first = images[np.flatnonzero(labels == 7)[0]]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "digits" / "7" / "7_0.png")), first)
    with pytest.raises(CnnlabError, match="--classes cat: not a class"):
        write_pngs(tmp_path / "digits", "test", ["cat"], 1, prepared=tmp_path / "prepared")
