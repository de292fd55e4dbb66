"""Probed as a hostile user would: bad params, doctored files, kills. Every case ends in one readable
line and a non-zero exit (or the documented handling), with no traceback and nothing half-written."""

import gzip
import os
import shutil
import signal
import struct
import time
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, make_mirror, write_idx
from test_stages import assert_one_line_error, edit_params, outputs, project_copy, run


def stage(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def prepared_project(tmp: Path, n_train: int, batch_size: int) -> Path:
    """A project with generated MNIST downloaded and prepared, for the train stage's cases."""
    project = project_copy(tmp)
    edit_params(project, data={"verify_checksums": False},
                train={"epochs": 4, "batch_size": batch_size, "scheduler": "none", "patience": 0})
    mirror = make_mirror(tmp / "mirror", n_train=n_train, n_test=100)
    for script in ("stages/download.py", "stages/prepare.py"):
        assert run(project, script, mirror=mirror).returncode == 0
    return project


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepared_project(tmp_path_factory.mktemp("hostile"), n_train=400, batch_size=64)


@pytest.fixture(scope="module")
def slower(tmp_path_factory) -> Path:
    """Epochs long enough (about 170 steps) for a kill sent after one to land inside the next."""
    return prepared_project(tmp_path_factory.mktemp("hostile-slow"), n_train=3000, batch_size=16)


def fresh(prepared: Path, tmp_path: Path) -> Path:
    project = tmp_path / "p"
    shutil.copytree(prepared, project)
    return project


# --- params ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,values,fragment", [
    ("train", {"lr": float("inf")}, "train.lr must be a finite number > 0 and <= 10; got inf"),
    ("train", {"weight_decay": float("inf")}, "train.weight_decay must be a finite number"),
    ("mlp", {"hidden": 10**9}, "mlp.hidden must be an integer >= 1 and <= 65536"),
    ("data", {"image_size": 10**6}, "data.image_size must be an integer >= 8 and <= 1024"),
    ("report", {"dpi": 10**6}, "report.dpi must be an integer >= 30 and <= 300"),
    ("models", [["mlp"]], "models must be a non-empty list of distinct names"),
    ("lenet", False, "lenet must be a mapping of"),
])
def test_bad_params_are_one_line(tmp_path, section, values, fragment):
    project = project_copy(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section] = {**params[section], **values} if isinstance(values, dict) else values
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert_one_line_error(run(project, "stages/train.py", "mlp"), fragment)
    assert outputs(project) == []


def test_duplicate_keys_are_one_line(tmp_path):
    project = project_copy(tmp_path)
    import re
    text, n = re.subn(r"(?m)^(train:.*\n)", r"\1  epochs: 2\n", (project / "params.yaml").read_text(), count=1)
    assert n == 1
    (project / "params.yaml").write_text(text)
    assert_one_line_error(run(project, "stages/train.py", "mlp"), "duplicate key 'epochs'")


# --- diverged and non-finite ----------------------------------------------------------------------

def test_non_finite_starting_weights_are_refused(prepared, tmp_path):
    project = fresh(prepared, tmp_path)
    from cnnlab.models import build
    state = build("mlp", 1, 10, 28).state_dict()
    state["1.weight"][0, 0] = float("nan")
    torch.save(state, project / "nan.pt")
    edit_params(project, mlp={"weights": "nan.pt"})
    assert_one_line_error(run(project, "stages/train.py", "mlp"), "tensor 1.weight holds NaN or inf")
    assert not (project / "models").exists()


def test_a_diverged_fit_stops_with_the_epoch_and_step_and_saves_nothing(prepared, tmp_path):
    """Finite but enormous starting weights overflow the logits at once: the loss is NaN at step 1."""
    project = fresh(prepared, tmp_path)
    from cnnlab.models import build
    state = {k: torch.full_like(v, 1e30) for k, v in build("mlp", 1, 10, 28).state_dict().items()}
    torch.save(state, project / "huge.pt")
    edit_params(project, mlp={"weights": "huge.pt"}, train={"progress": False})
    assert_one_line_error(run(project, "stages/train.py", "mlp"), "mlp: training diverged at epoch 1, step 1 of 6",
                          "nothing was saved")
    assert not (project / "models" / "mlp.pt").exists() and not (project / "metrics").exists()


# --- interrupted and repeated training ----------------------------------------------------------

def train_once(project: Path) -> bytes:
    assert run(project, "stages/train.py", "mlp").returncode == 0
    return (project / "models" / "mlp.pt").read_bytes()


def test_the_same_training_gives_byte_identical_checkpoints(prepared, tmp_path):
    project = fresh(prepared, tmp_path)
    edit_params(project, train={"resume": False})
    first = train_once(project)
    (project / "models" / "mlp.pt").unlink()
    assert train_once(project) == first


def kill_after_epoch(project: Path, epoch: int, signum: int) -> subprocess.CompletedProcess:
    process = stage(project, "stages/train.py", "mlp")
    for line in process.stdout:
        if line.startswith(f"mlp epoch {epoch}:"):  # printed once that epoch's snapshot is on disk
            process.send_signal(signum)
            break
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_sigterm_is_handled_like_ctrl_c(slower, tmp_path):
    project = fresh(slower, tmp_path)
    result = kill_after_epoch(project, 1, signal.SIGTERM)
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in result.stderr
    assert not (project / "models" / "mlp.pt").exists() and not (project / "metrics").exists()
    assert not list(project.rglob(".cnnlab-tmp-*"))


def test_a_killed_training_resumes_and_ends_with_the_same_weights(slower, tmp_path):
    straight = fresh(slower, tmp_path / "a")
    reference = train_once(straight)
    project = fresh(slower, tmp_path / "b")
    assert kill_after_epoch(project, 2, signal.SIGKILL).returncode == -signal.SIGKILL
    snapshot = project / ".cnnlab" / "resume" / "mlp.pt"
    assert not (project / "models" / "mlp.pt").exists() and snapshot.is_file()
    result = run(project, "stages/train.py", "mlp")
    assert result.returncode == 0 and "mlp: resuming after epoch 2" in result.stdout, result.stdout
    assert (project / "models" / "mlp.pt").read_bytes() == reference
    assert not snapshot.exists()  # spent once the outputs are in place: never an output, never stale
    assert len((project / "plots" / "train" / "mlp.csv").read_text().splitlines()) == 1 + 4


def test_stale_temporaries_of_killed_stages_are_swept(prepared, tmp_path):
    project = fresh(prepared, tmp_path)
    stale = project / "metrics" / "train" / ".cnnlab-tmp-999999999"
    stale.mkdir(parents=True)
    (stale / "mlp.json").write_text('{"half": ')
    train_once(project)
    assert not stale.exists()


# --- doctored data files --------------------------------------------------------------------------

def mnist_mirror_with(tmp_path: Path, name: str, payload: bytes) -> Path:
    mirror = make_mirror(tmp_path / "mirror", n_train=40, n_test=20, gz=False)
    (mirror / "MNIST" / "raw" / name).write_bytes(payload)
    return mirror


@pytest.mark.parametrize("payload,fragment", [
    (b"\x08\x03\x00\x00" + b"\x00" * 100, "not an IDX file of unsigned bytes (magic 08030000"),
    (struct.pack(">BBBBIIII", 0, 0, 8, 4, 10, 28, 28, 1), "declares 4 dimensions"),
    (struct.pack(">BBBBIII", 0, 0, 8, 3, 60000, 60000, 60000), "over the 4,294,967,296-byte limit"),
    (struct.pack(">BBBBIII", 0, 0, 8, 3, 100, 28, 28) + b"\x00" * 100, "truncated: 100 of the 78,400 bytes"),
])
def test_doctored_idx_files_are_one_line(tmp_path, payload, fragment):
    project = project_copy(tmp_path)
    edit_params(project, data={"verify_checksums": False})
    mirror = mnist_mirror_with(tmp_path, "train-images-idx3-ubyte", payload)
    assert_one_line_error(run(project, "stages/download.py", mirror=mirror), fragment)
    assert outputs(project) == []


def test_a_gzip_bomb_stops_at_the_size_its_header_declares(tmp_path):
    """A 40-image header followed by 200 MB of zeros (a 200 KB gzip) is refused without writing it out."""
    project = project_copy(tmp_path)
    edit_params(project, data={"verify_checksums": False})
    mirror = make_mirror(tmp_path / "mirror", n_train=40, n_test=20, gz=True)
    bomb = gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, 40, 28, 28) + bytes(40 * 784 + 200 * 2**20), 9)
    (mirror / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    assert len(bomb) < 2**20
    assert_one_line_error(run(project, "stages/download.py", mirror=mirror), "holds more than the 31,360 bytes")
    assert outputs(project) == []


def test_images_that_are_not_square_stop_prepare(tmp_path):
    """IDX images declared 40 x 784 x 1: valid IDX, but no square image."""
    project = project_copy(tmp_path)
    edit_params(project, data={"verify_checksums": False})
    mirror = make_mirror(tmp_path / "mirror", n_train=40, n_test=20, gz=False)
    write_idx(mirror / "MNIST" / "raw" / "train-images-idx3-ubyte", np.zeros((40, 784, 1), np.uint8))
    assert run(project, "stages/download.py", mirror=mirror).returncode == 0
    assert_one_line_error(run(project, "stages/prepare.py"), "train images have shape (1, 784, 1)")
    assert not (project / "data" / "prepared").exists()


# --- the user's own folders -----------------------------------------------------------------------

def image_folder(base: Path) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("a", "b"):
            (base / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(base / split / cls / f"{i}.png")
    return base


def folder_project(tmp_path: Path, base: Path) -> Path:
    project = project_copy(tmp_path)
    edit_params(project, data={"dataset": "folder", "path": str(base), "image_size": 8},
                prepare={"val_fraction": 0.25})
    return project


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: what PIL's bomb check reads."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_a_folder_link_loop_is_refused(tmp_path):
    base = image_folder(tmp_path / "imgs")
    (base / "train" / "a" / "loop").symlink_to(base / "train" / "a")
    assert_one_line_error(run(folder_project(tmp_path, base), "stages/download.py"), "loop: a linked folder")


def test_a_file_link_leaving_the_folder_is_refused(tmp_path):
    base = image_folder(tmp_path / "imgs")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(base / "train" / "a" / "0.png", outside)
    (base / "train" / "b" / "x.png").symlink_to(outside)
    assert_one_line_error(run(folder_project(tmp_path, base), "stages/download.py"), "x.png: links to", "outside")


def test_a_decompression_bomb_is_one_line(tmp_path):
    base = image_folder(tmp_path / "imgs")
    (base / "train" / "a" / "bomb.png").write_bytes(png_header_only(20000, 20000))
    assert_one_line_error(run(folder_project(tmp_path, base), "stages/download.py"), "bomb.png: too large to decode")


def test_sixteen_bit_images_are_rescaled_not_clipped(tmp_path):
    from PIL import Image
    base = image_folder(tmp_path / "imgs")
    Image.fromarray(np.full((12, 12), 32768, np.uint16)).save(base / "test" / "a" / "deep.png")
    project = folder_project(tmp_path, base)
    assert run(project, "stages/download.py").returncode == 0
    assert run(project, "stages/prepare.py").returncode == 0
    images = torch.from_numpy(np.load(project / "data" / "prepared" / "test_images.npy"))
    assert images[3].float().mean().item() == pytest.approx(128, abs=1)  # test/a: 0.png 1.png 2.png deep.png


def test_images_in_both_train_and_test_are_dropped_from_train_and_counted(tmp_path):
    base = image_folder(tmp_path / "imgs")
    shutil.copy(base / "test" / "b" / "0.png", base / "train" / "b" / "copy-of-test.png")
    shutil.copy(base / "train" / "a" / "0.png", base / "train" / "a" / "repeat.png")
    project = folder_project(tmp_path, base)
    assert run(project, "stages/download.py").returncode == 0
    result = run(project, "stages/prepare.py")
    assert result.returncode == 0 and "exact duplicates dropped from train: 1 repeated, 1 also in test" in result.stdout
    sizes = yaml.safe_load((project / "data" / "prepared" / "info.json").read_text())["sizes"]
    assert sizes["train"] + sizes["val"] == 12 and sizes["test"] == 6


def test_a_model_too_large_for_memory_is_one_line(prepared, tmp_path):
    """Counted on the meta device, before any allocation: 65536 hidden units at image_size 28 are
    4.35e9 parameters, 81 GiB for weights, gradients, Adam moments and the best copy."""
    project = fresh(prepared, tmp_path)
    from cnnlab.runtime import available_bytes
    if available_bytes() > 100 * 2**30:
        pytest.skip("this machine has room for it")
    edit_params(project, mlp={"hidden": 65536})
    assert_one_line_error(run(project, "stages/train.py", "mlp"), "parameters needs",
                          "GiB is free")
    assert not (project / "models" / "mlp.pt").exists()


def test_a_folder_too_large_to_decode_is_one_line(tmp_path, monkeypatch):
    """Decoding goes to a memory map on disk (memory is no limit): the disk's free space is checked."""
    import shutil
    from cnnlab import CnnlabError
    from cnnlab.datasets import formats
    base = image_folder(tmp_path / "imgs")
    formats.fetch("folder", tmp_path / "raw", path=str(base))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(CnnlabError, match=rf"{tmp_path}: decoding needs 0.0 GiB of disk but only 0.0 GiB is free"):
        formats.load_split("folder", tmp_path / "raw", "train", 32)


def test_an_archive_that_unpacks_too_large_is_refused_before_unpacking(tmp_path, monkeypatch):
    from cnnlab import CnnlabError
    from cnnlab.datasets import cifar, formats
    from conftest import make_cifar_mirror
    mirror = make_cifar_mirror(tmp_path / "m", archive=True)
    monkeypatch.setattr(cifar, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(CnnlabError, match=r"cifar-10-python.tar.gz: unpacks to [\d,]+ bytes, over the 1,000-byte limit"):
        formats.fetch("cifar10", tmp_path / "raw", mirror, verify=False)


def test_a_stage_ends_when_its_parent_dies(prepared, tmp_path):
    """What `dvc repro` killed with SIGTERM leaves behind: the stage must stop, not finish unrecorded."""
    project = fresh(prepared, tmp_path)
    edit_params(project, train={"epochs": 200, "patience": 0})  # never done before the kill
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, 'stages/train.py', 'mlp'], cwd={str(project)!r}, "
        f"env={{**os.environ, 'PYTHONPATH': {str(REPO / 'src')!r}}}, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(child.pid, flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (project / ".cnnlab" / "resume" / "mlp.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # training is under way
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert not (project / "models" / "mlp.pt").exists() and not (project / "metrics").exists()


def test_a_checkpoint_copied_over_another_models_is_refused(prepared, tmp_path):
    """lenet.pt copied over mlp.pt must not score as the MLP: one line, exit 1, nothing written."""
    project = fresh(prepared, tmp_path)
    train_once(project)
    shutil.copy(project / "models" / "mlp.pt", project / "models" / "lenet.pt")
    for stage_script in ("stages/evaluate.py", "stages/analyze.py"):
        assert_one_line_error(run(project, stage_script, "lenet"),
                              "models/lenet.pt: holds a trained mlp, not lenet", "dvc repro -f -s train@lenet")
    assert not (project / "metrics" / "test" / "lenet.json").exists()
    assert not (project / "metrics" / "analysis" / "lenet.json").exists()


def test_an_image_size_too_small_for_the_model_stops_before_training(tmp_path):
    import torch

    from cnnlab import CnnlabError
    from cnnlab.prepare import prepare, save_prepared
    from cnnlab.train.main import train_model
    from conftest import base_params
    images = torch.randint(0, 255, (40, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40) % 2
    options = {"train_size": None, "test_size": None, "samples_per_class": None, "val_fraction": 0.25,
               "val_size": None, "class_fraction": {}, "seed": 0}
    save_prepared(prepare((images, labels), (images[:10], labels[:10]), ("a", "b"), options), tmp_path / "prepared")
    params = base_params()
    with pytest.raises(CnnlabError, match=r"data.image_size 8 is too small for lenet \(it needs at least 12 pixels\)"):
        train_model("lenet", params, tmp_path / "prepared")


def _snapshot_state() -> dict:
    return {"model": torch.nn.Linear(300, 300), "generators": [None]}  # 360 kB of weights


def test_a_full_disk_at_the_resume_snapshot_names_it_and_the_fix(tmp_path, monkeypatch):
    """torch.save on a full disk raises a RuntimeError, not always an OSError: both name the snapshot."""
    from cnnlab import CnnlabError
    from cnnlab.train.resume import Resume
    snapshot = tmp_path / ".cnnlab/resume/mlp.pt"

    def full_disk(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CnnlabError) as raised:
        Resume(snapshot, "fingerprint").save(_snapshot_state(), {"history": []})
    assert str(raised.value).startswith(f"{snapshot}: could not be written (is the disk full?) (the resume snapshot")
    assert "free some space" in str(raised.value) and "train.resume: false" in str(raised.value)
    assert not snapshot.exists() and not list(tmp_path.rglob(".cnnlab-tmp-*"))

    monkeypatch.setattr(torch, "save", lambda obj, path: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # not every RuntimeError is a full disk
        Resume(snapshot, "fingerprint").save(_snapshot_state(), {"history": []})


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_disk_at_the_resume_snapshot(tmp_path):
    from cnnlab import CnnlabError
    from cnnlab.train.resume import Resume
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        snapshot = disk / ".cnnlab/resume/mlp.pt"
        with pytest.raises(CnnlabError) as raised:
            Resume(snapshot, "fingerprint").save(_snapshot_state(), {"history": []})
        assert str(raised.value).startswith(f"{snapshot}: "), raised.value
        assert "free some space" in str(raised.value) and "train.resume: false" in str(raised.value)
        assert not snapshot.exists() and not list(disk.rglob(".cnnlab-tmp-*"))
    finally:  # lazily: the exception's traceback holds torch's writer, and the writer its file open
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_explanations_too_large_for_the_address_space_limit_are_one_line(prepared, tmp_path):
    """Under a real limit (`prlimit --as`): analyze refuses before any analysis, naming
    analyze.explain_samples, instead of dying inside integrated gradients. The limit leaves the
    stage half the memory explain.peak_bytes estimates for its explanations."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit is not installed")
    project = fresh(prepared, tmp_path)
    edit_params(project, mlp={"hidden": 4096}, train={"epochs": 1}, analyze={"explain_samples": 2000})
    train_once(project)
    from cnnlab import explain
    from cnnlab.engine.checkpoints import load_checkpoint
    model, _ = load_checkpoint(project / "models" / "mlp.pt", torch.device("cpu"), expected="mlp")
    needed = explain.peak_bytes(model, (1, 28, 28), 100, 4)
    probe = subprocess.run([sys.executable, "-c", (  # what the stage has mapped when it checks
        "import psutil, torch; from cnnlab.plumbing import stage; from cnnlab.analyze import analyze_model; "
        "from cnnlab.results import write_result; from cnnlab.prepare import load_prepared; "
        "from cnnlab.engine.checkpoints import load_checkpoint; "
        "load_checkpoint('models/mlp.pt', torch.device('cpu'), expected='mlp'); load_prepared('data/prepared', ('test',)); "
        "print(psutil.Process().memory_info().vms)")], cwd=project, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True, text=True, check=True)
    limit = int(probe.stdout) + needed // 2
    result = subprocess.run(["prlimit", f"--as={limit}", sys.executable, "stages/analyze.py", "mlp"], cwd=project,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    assert_one_line_error(result, "params.yaml: analyze.explain_samples 2000 (scoring 4 attribution methods on 100 "
                          "test images of 1x28x28 with mlp)", "is free to this process", "address-space limit", "lower analyze.explain_samples")
    assert not (project / "plots" / "analysis" / "mlp").exists() and not (project / "metrics" / "analysis").exists()
