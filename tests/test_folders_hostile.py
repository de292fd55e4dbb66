"""Image folders as users really have them: each kind generated in the real on-disk formats (PIL-written
JPEG, PNG, GIF, TIFF; real EXIF; truncated bytes; AppleDouble files), and each case ends either in the
right decoded result or in one readable line naming the file or folder, the cause and the fix."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import CnnlabError
from cnnlab.datasets import folder
from cnnlab.datasets import formats as datasets
from test_stages import assert_one_line_error, edit_params, outputs, project_copy, run

RED, BLUE = (255, 0, 0), (0, 0, 255)


def noise_image(seed: int, size: int = 12, colour: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3) if colour else (size, size), dtype=np.uint8))


def class_tree(base: Path, classes=("a", "b"), per_class: int = 4, seed: int = 0, colour: bool = False) -> Path:
    """<class>/<i>.png, every image distinct noise (identical ones would be dropped as duplicates)."""
    for c, name in enumerate(classes):
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise_image(seed * 10000 + c * 100 + i, colour=colour).save(base / name / f"{i}.png")
    return base


def fetch(base: Path, tmp_path: Path) -> dict:
    """Download the folder; its manifest."""
    raw = datasets.fetch("folder", tmp_path / "raw", path=str(base))
    return json.loads((raw / "manifest.json").read_text())


def refused(base: Path, tmp_path: Path) -> str:
    with pytest.raises(CnnlabError) as err:
        datasets.fetch("folder", tmp_path / "raw", path=str(base))
    message = str(err.value)
    assert "\n" not in message
    return message


def prepared(tmp_path: Path, size: int = 16, **options) -> dict:
    from cnnlab.prepare import prepare
    from conftest import base_params
    root = tmp_path / "raw"
    train, test, classes, val = datasets.decode_all("folder", root, size)
    return prepare(train, test, classes, {**base_params()["prepare"], **options}, val)


def apple_double(path: Path) -> None:
    """What a Mac writes beside a file on a non-Mac disk: `._<name>`, resource fork and attributes."""
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))


def oriented_jpeg(path: Path, orientation: int) -> None:
    """40x20 stored: left half red, right half blue, with an EXIF orientation tag."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20], stored[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[folder.ORIENTATION] = orientation
    Image.fromarray(stored).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def is_red(pixels: torch.Tensor) -> bool:  # [3, h, w]
    mean = pixels.float().mean(dim=(1, 2))
    return bool(mean[0] > 200 and mean[2] < 60)


def folder_project(tmp_path: Path, base: Path, image_size: int = 8) -> Path:
    project = project_copy(tmp_path)
    edit_params(project, data={"dataset": "folder", "path": str(base), "image_size": image_size},
                prepare={"val_fraction": 0.25})
    return project


# --- 1. a single class -----------------------------------------------------------------------------

def test_a_single_class_is_refused_at_download_naming_the_folder(tmp_path):
    base = class_tree(tmp_path / "imgs", classes=("cats",))
    (base / ".ipynb_checkpoints").mkdir()
    result = run(folder_project(tmp_path, base), "stages/download.py")
    assert_one_line_error(result, f"{base}: only one class folder (cats; ignored as hidden or system: "
                                  f".ipynb_checkpoints); a classifier needs at least 2 classes")
    split = class_tree(tmp_path / "split" / "train", classes=("cats",)).parent
    assert refused(split, tmp_path).startswith(f"{split / 'train'}: only one class folder (cats)")


# --- 2. hidden and system entries --------------------------------------------------------------------

def test_hidden_and_system_entries_are_neither_classes_nor_images(tmp_path):
    base = class_tree(tmp_path / "imgs")
    for name in (".ipynb_checkpoints", ".git/objects/ab", "__MACOSX/a"):
        (base / name).mkdir(parents=True)
    noise_image(1).save(base / ".ipynb_checkpoints" / "0-checkpoint.png")
    (base / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (base / ".git" / "objects" / "ab" / "cdef").write_bytes(b"x\x01blob")
    apple_double(base / "__MACOSX" / "a" / "._0.png")
    (base / "a" / ".ipynb_checkpoints").mkdir()
    noise_image(2).save(base / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")  # not a fifth image of a
    for name in (".DS_Store", "Thumbs.db", "desktop.ini"):
        (base / "a" / name).write_bytes(b"\x00\x00\x00\x01Bud1" if name == ".DS_Store" else b"[.ShellClassInfo]")
    apple_double(base / "b" / "._0.png")  # named like an image: would be unreadable if read
    (base / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    found = fetch(base, tmp_path)
    assert found["classes"] == ["a", "b"] and found["images"] == {"all": 8}
    card = found["card"]
    assert card["skipped"]["hidden"] == 5 and found["skipped_not_images"] == 5
    assert card["ignored_folders"] == [".git", ".ipynb_checkpoints", "__MACOSX", "a/.ipynb_checkpoints"]
    raw = tmp_path / "raw" / "folder" / "all"
    assert sorted(p.name for p in raw.rglob("*") if p.is_file()) == sorted([f"{i}.png" for i in range(4)] * 2)


# --- 3. Kaggle-style split folders ---------------------------------------------------------------------

@pytest.mark.parametrize("train,val,test", [("train", "valid", "test"), ("train", "validation", "test"),
                                            ("Train", "VAL", "Test"), ("training", "valid", "testing")])
def test_a_valid_folder_is_the_validation_split(tmp_path, train, val, test):
    base = tmp_path / "imgs"
    for name, n, seed in ((train, 6, 1), (val, 3, 2), (test, 2, 3)):
        class_tree(base / name, per_class=n, seed=seed)
    found = fetch(base, tmp_path)
    assert found["splits"] == ["train", "val", "test"] and found["card"]["split_folders"]["val"] == val
    splits = prepared(tmp_path)
    assert splits["info"]["sizes"] == {"train": 12, "val": 6, "test": 4}  # valid/ used, not carved from train/


def test_two_validation_folders_are_refused_pick_one(tmp_path):
    base = tmp_path / "imgs"
    for name in ("train", "val", "valid"):
        class_tree(base / name)
    assert refused(base, tmp_path) == (f"{base}: val/ and valid/ are both the val split; pick one (merge them, or "
                                       f"move the other out of data.path)")


def test_split_folders_without_train_and_strays_beside_train_are_refused(tmp_path):
    base = tmp_path / "imgs"
    class_tree(base / "valid")
    class_tree(base / "test")
    assert refused(base, tmp_path).startswith(f"{base}: has valid/, test/ but no train/ folder; put the training "
                                              f"images in {base}/train/<class>/")
    class_tree(base / "train")
    class_tree(base / "extra")
    assert refused(base, tmp_path).startswith(f"{base / 'extra'}: a folder beside train/ that is not a split")


# --- 4. EXIF orientation -------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation,red_part", [(1, "left"), (3, "right"), (6, "top"), (8, "bottom")])
def test_exif_orientation_turns_the_image_upright_in_prepare_and_predict(tmp_path, orientation, red_part):
    from cnnlab.predict import load_images
    base = class_tree(tmp_path / "imgs", colour=True)
    oriented_jpeg(base / "a" / "photo.jpg", orientation)
    found = fetch(base, tmp_path)
    assert found["card"]["rotated"] == (orientation != 1)
    images, _ = datasets.load_split("folder", tmp_path / "raw", "all", 16)
    predicted = load_images([base / "a" / "photo.jpg"], channels=3, size=16)[0]
    for image in (images[4], predicted):  # a/: 0..3.png, photo.jpg
        half = {"left": image[:, :, :8], "right": image[:, :, 8:], "top": image[:, :8], "bottom": image[:, 8:]}
        assert is_red(half[red_part]), orientation


# --- 5. a truncated JPEG -------------------------------------------------------------------------------

def truncated_jpeg(path: Path) -> None:
    import io
    buffer = io.BytesIO()
    noise_image(7, size=64, colour=True).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])  # the header is whole: download copies it


def test_a_truncated_jpeg_names_the_users_file_not_its_copy(tmp_path):
    base = class_tree(tmp_path / "imgs")
    truncated_jpeg(base / "b" / "broken.jpg")
    project = folder_project(tmp_path, base)
    assert run(project, "stages/download.py").returncode == 0
    result = run(project, "stages/prepare.py")
    assert_one_line_error(result, f"error: {base / 'b' / 'broken.jpg'}: unreadable image (truncated: the file ends "
                                  f"before the image does); fix or remove it, then run `dvc repro -f download`")
    assert "data/raw/folder" not in result.stderr.split(";")[0]
    assert not (project / "data" / "prepared").exists() and not list(project.rglob(".cnnlab-tmp-*"))


def test_a_decoding_error_ends_the_workers_without_tracebacks(tmp_path, capfd, monkeypatch):
    """The error comes back from the first chunk while the other workers are busy with the next ones:
    ended by the pool with SIGTERM, they must not run the stage's handler (inherited by fork), which
    turns SIGTERM into a KeyboardInterrupt traceback from each."""
    base = class_tree(tmp_path / "imgs", per_class=40)
    truncated_jpeg(base / "a" / "0-broken.jpg")  # the first file of the first chunk
    fetch(base, tmp_path)
    monkeypatch.setattr(folder, "CHUNK", 2)

    def interrupted(signum, frame):  # what cnnlab's stage runner sets for SIGTERM
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        with pytest.raises(CnnlabError, match=r"0-broken.jpg: unreadable image \(truncated"):
            datasets.load_split("folder", tmp_path / "raw", "all", 8)
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_decoding_problems_come_back_from_workers_as_values(tmp_path):
    truncated_jpeg(tmp_path / "t.jpg")
    array, problem = folder._decode_job(([str(tmp_path / "t.jpg")], "RGB", 8))
    assert array is None and problem == (str(tmp_path / "t.jpg"), "unreadable image (truncated: the file ends before "
                                         "the image does)", "fix or remove it")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGTERM, lambda *_: None)  # what the stage sets, and fork would hand down
        folder._quiet_worker()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


# --- 6. a class of identical images; classes named, not numbered ---------------------------------------

def test_a_class_of_identical_images_is_named_with_what_happened(tmp_path):
    base = class_tree(tmp_path / "imgs", classes=("cats", "dogs"), per_class=10)
    (base / "same as it ever was").mkdir()
    for i in range(10):
        noise_image(99).save(base / "same as it ever was" / f"{i}.png")
    fetch(base, tmp_path)
    with pytest.raises(CnnlabError, match=r"^prepare: class 'same as it ever was' has 8 training images but 0 left after "
                                          r"dropping exact duplicates .*a class needs at least 2 distinct images"):
        prepared(tmp_path, test_fraction=0.2)


def test_split_errors_name_the_class_not_its_index(tmp_path):
    base = class_tree(tmp_path / "imgs", classes=("cats", "dogs"), per_class=6)
    (base / "lonely").mkdir()
    noise_image(5).save(base / "lonely" / "0.png")
    fetch(base, tmp_path)
    with pytest.raises(CnnlabError) as err:
        prepared(tmp_path, test_fraction=0.2)
    assert "class 'lonely' has only 1 image" in str(err.value) and "[" not in str(err.value)
    from cnnlab.prepare import per_class_sample
    with pytest.raises(CnnlabError, match="samples_per_class is 9 but class 'cats' has only"):
        per_class_sample(torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), 9, 2, 0, ("cats", "dogs"))


# --- 7. GIF, transparency, multi-page TIFF ---------------------------------------------------------------

def animated_gif(path: Path, frames: int = 3) -> None:
    images = [Image.new("RGB", (16, 16), (60 * i, 255 - 60 * i, 0)) for i in range(frames)]
    images[0].save(path, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def test_gifs_are_skipped_and_counted_and_a_folder_of_only_gifs_says_so(tmp_path):
    base = class_tree(tmp_path / "imgs")
    animated_gif(base / "a" / "wave.gif")
    animated_gif(base / "b" / "still.GIF", frames=1)
    assert fetch(base, tmp_path)["card"]["skipped"]["gif"] == 2
    (base / "c").mkdir()
    for i in range(3):
        animated_gif(base / "c" / f"{i}.gif")
    assert refused(base, tmp_path / "2") == (f"{base / 'c'}: holds only 3 GIF files, no image cnnlab reads; GIF is "
                                             f"not supported (animated or not): convert them to PNG")
    only = tmp_path / "only"
    for name in ("x", "y"):
        (only / name).mkdir(parents=True)
        animated_gif(only / name / "0.gif")
    assert refused(only, tmp_path / "3").startswith(f"{only}: holds only 2 GIF files, no image cnnlab reads")


def test_a_gif_under_another_name_is_refused(tmp_path):
    base = class_tree(tmp_path / "imgs")
    animated_gif(base / "a" / "disguised.png")
    assert refused(base, tmp_path) == (f"{base / 'a' / 'disguised.png'}: a GIF image under another name; GIF is not "
                                       f"supported; convert it to PNG")


def test_transparency_is_flattened_onto_white_and_counted(tmp_path):
    base = class_tree(tmp_path / "imgs", colour=True)
    rgba = np.zeros((16, 16, 4), np.uint8)  # black where transparent: convert("RGB") alone would show it
    rgba[:, 8:] = (*BLUE, 255)
    Image.fromarray(rgba, "RGBA").save(base / "a" / "z-alpha.png")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.paste(1, (0, 0, 16, 8))
    palette.save(base / "b" / "z-palette.png", transparency=0)  # index 0 (black) transparent
    card = fetch(base, tmp_path)["card"]
    assert card["converted"]["alpha_flattened_on_white"] == 2 and card["converted"]["palette_to_rgb"] == 1
    images, _ = datasets.load_split("folder", tmp_path / "raw", "all", 16)
    alpha, palette = images[4], images[9]
    assert alpha[:, :, :8].float().mean() > 250 and is_red(alpha[[2, 1, 0], :, 8:])  # white; blue
    assert palette[:, 8:].float().mean() > 250 and palette[1, :8].float().mean() > 190 and palette[0, :8].max() < 20


def test_grayscale_with_alpha_stays_grayscale(tmp_path):
    base = class_tree(tmp_path / "imgs")
    la = np.zeros((16, 16, 2), np.uint8)
    la[:, 8:] = (40, 255)
    Image.fromarray(la, "LA").save(base / "a" / "z-la.png")
    found = fetch(base, tmp_path)
    assert found["grayscale"] and found["card"]["converted"]["alpha_flattened_on_white"] == 1
    images, _ = datasets.load_split("folder", tmp_path / "raw", "all", 16)
    assert images.shape[1] == 1 and images[4, 0, :, :8].min() == 255 and images[4, 0, :, 8:].max() == 40


def test_a_multi_page_tiff_uses_its_first_page(tmp_path):
    base = class_tree(tmp_path / "imgs")
    Image.new("L", (16, 16), 30).save(base / "a" / "z-pages.tif", save_all=True,
                                      append_images=[Image.new("L", (16, 16), 220)])
    assert fetch(base, tmp_path)["card"]["converted"]["first_frame_of_multi_frame"] == 1
    images, _ = datasets.load_split("folder", tmp_path / "raw", "all", 16)
    assert images[4].float().mean() == 30


# --- 8. more folders as users have them ----------------------------------------------------------------

def test_uppercase_suffixes_unicode_and_spaces_in_class_names_and_nested_folders(tmp_path):
    base = tmp_path / "imgs"
    for c, name in enumerate(("café au lait", "猫 cat")):
        (base / name / "indoor" / "night").mkdir(parents=True)
        noise_image(c * 10).save(base / name / "0.PNG")
        noise_image(c * 10 + 1, colour=True).save(base / name / "1.JPG")
        noise_image(c * 10 + 2, colour=True).save(base / name / "indoor" / "2.Jpeg")
        noise_image(c * 10 + 3).save(base / name / "indoor" / "night" / "3.TIFF")
    found = fetch(base, tmp_path)
    assert found["classes"] == ["café au lait", "猫 cat"] and found["images"] == {"all": 8}
    assert found["card"]["found"] == {"café au lait": {"all": 4}, "猫 cat": {"all": 4}}
    assert found["card"]["converted"]["grayscale_to_rgb"] == 4
    images, labels = datasets.load_split("folder", tmp_path / "raw", "all", 8)
    assert images.shape == (8, 3, 8, 8) and labels.tolist() == [0] * 4 + [1] * 4


def test_cmyk_jpeg_and_sixteen_bit_png_are_converted_and_counted(tmp_path):
    base = class_tree(tmp_path / "imgs")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(base / "a" / "z-cmyk.jpg")  # printers' red
    Image.fromarray(np.full((16, 16), 16384, np.uint16)).save(base / "b" / "z-deep.png")
    converted = fetch(base, tmp_path)["card"]["converted"]
    assert converted["cmyk_to_rgb"] == 1 and converted["high_bit_depth_to_8_bit"] == 1
    images, _ = datasets.load_split("folder", tmp_path / "raw", "all", 8)
    assert is_red(images[4]) and images[9].float().mean() == pytest.approx(64, abs=1)


@pytest.mark.parametrize("make,message", [
    (lambda a: (a / "empty.jpg").write_bytes(b""), "empty.jpg: unreadable image (an empty file, 0 bytes); fix or remove it"),
    (lambda a: (a / "notes.jpg").write_text("shopping list: eggs, milk\n"),
     "notes.jpg: unreadable image (not an image: its content is no format PIL reads, whatever its name says)"),
    (lambda a: (a.parent / "c").mkdir(), "c: no images (.jpg, .jpeg, .png, .ppm, ...); add images of this class or "
                                         "remove the folder"),
    (lambda a: [(a.parent / "c").mkdir(), (a.parent / "c" / "0.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")],
     "c: holds only 1 HEIC/HEIF file, no image cnnlab reads; HEIC is not supported: convert them to JPEG"),
])
def test_broken_files_and_empty_classes_are_one_line(tmp_path, make, message):
    base = class_tree(tmp_path / "imgs")
    make(base / "a")
    assert message in refused(base, tmp_path)


def test_loose_images_are_counted_and_a_flat_folder_needs_class_folders(tmp_path):
    base = class_tree(tmp_path / "imgs")
    noise_image(50).save(base / "stray.png")
    (base / "labels.csv").write_text("file,label\n")
    card = fetch(base, tmp_path)["card"]
    assert card["skipped"]["outside_class_folders"] == 1 and card["skipped"]["not_images"] == 1
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        noise_image(i).save(flat / f"{i}.png")
    assert refused(flat, tmp_path / "2") == (f"{flat}: 3 images but no class folders; put each class's images in a "
                                             f"folder named after the class ({flat}/<class>/<image>)")


def test_splits_with_different_classes_say_which(tmp_path):
    base = tmp_path / "imgs"
    class_tree(base / "train", classes=("a", "b", "c"))
    class_tree(base / "valid", classes=("a", "b", "d"))
    assert refused(base, tmp_path) == (f"{base}: train/ and valid/ have different class folders (valid/ lacks c; "
                                       f"valid/ has d, which train/ lacks); every split needs the same class folders")


def test_class_names_that_differ_only_in_unicode_form_are_explained(tmp_path):
    import unicodedata
    base = tmp_path / "imgs"
    class_tree(base / "train", classes=(unicodedata.normalize("NFC", "café"), "tea"))
    class_tree(base / "valid", classes=(unicodedata.normalize("NFD", "café"), "tea"))  # as copied from a Mac
    assert "the names differ only in their Unicode form" in refused(base, tmp_path)


def test_a_suffix_that_lies_about_the_format_is_read_by_content(tmp_path):
    base = class_tree(tmp_path / "imgs", colour=True)
    Image.new("RGB", (16, 16), RED).save(base / "a" / "z-png.jpg", "PNG")
    Image.new("RGB", (16, 16), RED).save(base / "b" / "z.webp", "WEBP", lossless=True)
    fetch(base, tmp_path)
    images, _ = datasets.load_split("folder", tmp_path / "raw", "all", 8)
    assert is_red(images[4]) and is_red(images[9])


# --- 9. the data card, from download through prepare to metrics/data.json ---------------------------------

def test_the_data_card_reaches_metrics_data_json(tmp_path):
    base = tmp_path / "imgs"
    class_tree(base / "train", classes=("cats", "dogs"), per_class=8, colour=True)
    class_tree(base / "valid", classes=("cats", "dogs"), per_class=2, seed=1, colour=True)
    class_tree(base / "test", classes=("cats", "dogs"), per_class=2, seed=2, colour=True)
    oriented_jpeg(base / "train" / "cats" / "z-photo.jpg", 6)
    animated_gif(base / "train" / "dogs" / "wave.gif")
    apple_double(base / "train" / "dogs" / "._0.png")
    (base / "__MACOSX").mkdir()
    (base / "train" / "dogs" / "copy.png").write_bytes((base / "train" / "dogs" / "3.png").read_bytes())
    project = folder_project(tmp_path, base)
    for script in ("stages/download.py", "stages/prepare.py", "stages/samples.py"):
        result = run(project, script)
        assert result.returncode == 0, result.stderr
    data = json.loads((project / "metrics" / "data.json").read_text())
    assert {"classes", "sizes", "class_counts", "duplicates_dropped", "card"} <= set(data)
    card = data["card"]
    assert card["source"] == str(base) and card["split_folders"] == {"train": "train", "val": "valid", "test": "test"}
    assert card["found"] == {"cats": {"train": 9, "val": 2, "test": 2}, "dogs": {"train": 9, "val": 2, "test": 2}}
    assert card["skipped"]["gif"] == 1 and card["skipped"]["hidden"] == 1 and card["ignored_folders"] == ["__MACOSX"]
    assert card["rotated"] == 1 and card["resized"] == 26 and card["image_size"] == 8 and card["channels"] == 3
    assert card["duplicates_dropped"]["per_class"] == {"dogs": 1}
    assert card["classes"] == {"cats": {"train": 9, "val": 2, "test": 2}, "dogs": {"train": 8, "val": 2, "test": 2}}
    info = json.loads((project / "data" / "prepared" / "info.json").read_text())
    assert info["card"] == card


def test_a_class_folder_named_in_latin1_bytes_is_refused_at_download(tmp_path):
    """What an old zip archive makes: a folder named 'café' in Latin-1 bytes, not UTF-8. It would be
    read and trained on, then end the samples stage in matplotlib with a traceback."""
    import os
    base = class_tree(tmp_path / "imgs")
    latin1 = os.fsencode(base) + b"/caf\xe9"
    os.mkdir(latin1)
    noise_image(99).save(os.fsdecode(latin1 + b"/0.png"))
    result = run(folder_project(tmp_path, base), "stages/download.py")
    assert_one_line_error(result, f"{base}/caf\\xe9: a class folder whose name is not UTF-8 text; rename it")
    assert not outputs(tmp_path / "project")


# --- the data card's minors ----------------------------------------------------------------------------

@pytest.mark.parametrize("orientation,largest", [(1, "40x20"), (6, "20x40"), (8, "20x40")])
def test_the_largest_size_is_measured_upright(tmp_path, orientation, largest):
    base = class_tree(tmp_path / "imgs", colour=True)
    oriented_jpeg(base / "a" / "photo.jpg", orientation)  # stored 40x20
    assert fetch(base, tmp_path)["card"]["sizes"]["largest"] == largest


def test_a_labels_csv_beside_the_splits_and_a_notes_txt_in_a_class_are_one_reason(tmp_path):
    base = tmp_path / "imgs"
    class_tree(base / "train")
    class_tree(base / "test", seed=1)
    (base / "labels.csv").write_text("file,label\n")
    (base / "train" / "a" / "notes.txt").write_text("taken in May\n")
    skipped = fetch(base, tmp_path)["card"]["skipped"]
    assert skipped["not_images"] == 2 and skipped["outside_class_folders"] == 0, skipped


def test_duplicates_identical_after_resizing_and_inside_test_are_reported(tmp_path):
    """Two plain grey files of different sizes are one image at 12x12: 'identical after resizing',
    not 'exact duplicates'. A pair inside test/ is kept (each is scored) but said."""
    import shutil
    from cnnlab.report import data_card_lines
    base = tmp_path / "imgs"
    class_tree(base / "train")
    class_tree(base / "test", seed=1)
    for side in (12, 20):
        Image.new("L", (side, side), 77).save(base / "train" / "a" / f"grey{side}.png")
    shutil.copy(base / "test" / "b" / "0.png", base / "test" / "b" / "copy.png")
    fetch(base, tmp_path)
    card = prepared(tmp_path, size=12, val_fraction=0.25)["info"]["card"]
    assert card["repeated_in_test"] == 1 and card["duplicates_dropped"]["repeated_in_train"] == 1
    lines = data_card_lines(card)
    assert ("- images identical after resizing to 12x12 dropped from training: 1 repeated in train (by class: 1 a)"
            in lines), lines[-4:]
    assert "- test images identical to another test image (kept, so scored twice): 1" in lines
    assert not any("exact" in line for line in lines)
