"""Fixtures: small generated datasets in the real on-disk formats, so tests never need downloads."""

from __future__ import annotations

import gzip
import re
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_MIRROR = REPO.parent / "shared" / "datasets"


def documented_commands(page: str) -> list[list[str]]:
    """The commands of the shell blocks that `page` (a path from the repository root) marks
    `<!-- run by: ... -->`, in order, each split as a shell splits it (comments dropped, continued
    lines joined): a test runs them as the reader reads them (tests/test_docs.py checks the mark)."""
    text = (REPO / page).read_text()
    blocks = re.findall(r"<!-- run by: [^>]+ -->\n```\w*\n(.*?)^```", text, re.S | re.M)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file (big-endian header: 0, 0, type 0x08, ndim; then each dim)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def synthetic_digits(n: int, seed: int, num_classes: int = 10, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the position of a bright square (jittered, on noise): easy to learn,
    impossible to guess without looking at the pixels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        top = 4 + row * 12 + int(rng.integers(-1, 2))
        left = 1 + col * 5 + int(rng.integers(0, 2))
        images[i, top:top + 7, left:left + 4] = rng.integers(180, 256)
    return images, labels.astype(np.uint8)


def make_mirror(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 200,
                gz: bool = True) -> Path:
    """A mirror in torchvision's layout: <root>/<folder>/raw/<file>[.gz]."""
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return root


@pytest.fixture
def mirror(tmp_path) -> Path:
    return make_mirror(tmp_path / "mirror")


@pytest.fixture
def real_mirror() -> Path:
    if not (REAL_MIRROR / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {REAL_MIRROR}/MNIST/raw")
    return REAL_MIRROR


def base_params() -> dict:
    """A valid params dict, as params.yaml in the repo would load, for small in-process runs."""
    from cnnlab.config import params
    return params.load(REPO / "params.yaml")


def colour_digits(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """3-channel versions of synthetic_digits [n, 3, size, size]: each channel scaled differently, so
    a decoder that mixes up channels or axes is caught."""
    images, labels = synthetic_digits(n, seed, size=size)
    return np.stack([images, images // 2, 255 - images], axis=1).astype(np.uint8), labels


def make_cifar_mirror(root: Path, dataset: str = "cifar10", per_batch: int = 40, n_test: int = 60,
                      archive: bool = False) -> Path:
    """CIFAR in torchvision's python layout: pickled dicts of numpy arrays, extracted or as .tar.gz."""
    import pickle
    import tarfile

    import torchvision.datasets as tvd
    source = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
    folder = root / source.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if dataset == "cifar10" else "fine_labels"
    batches = [(name, per_batch if len(source.train_list) > 1 else per_batch * 5, 10 + i)
               for i, (name, _) in enumerate(source.train_list)]
    for name, n, seed in [*batches, (source.test_list[0][0], n_test, 99)]:
        images, labels = colour_digits(n, seed)
        blob = {b"batch_label": name.encode(), b"data": images.reshape(n, -1),
                label_key.encode(): labels.astype(int).tolist()}
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
    names = [f"class{i}" for i in range(10 if dataset == "cifar10" else 100)]
    meta = {source.meta["key"]: names, "num_cases_per_batch": per_batch}
    (folder / source.meta["filename"]).write_bytes(pickle.dumps(meta, protocol=2))
    if archive:
        with tarfile.open(root / source.filename, "w:gz") as tar:
            tar.add(folder, arcname=source.base_folder)
        import shutil
        shutil.rmtree(folder)
    return root


def make_svhn_mirror(root: Path, n_train: int = 200, n_test: int = 60) -> Path:
    """SVHN as torchvision reads it: MATLAB files with X [32, 32, 3, N] and y [N, 1], 0 written as 10."""
    from scipy.io import savemat
    folder = root / "SVHN"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train_32x32.mat", n_train, 1), ("test_32x32.mat", n_test, 2)):
        images, labels = colour_digits(n, seed)
        y = np.where(labels == 0, 10, labels).reshape(-1, 1).astype(np.uint8)
        savemat(folder / name, {"X": images.transpose(2, 3, 1, 0), "y": y})
    return root


def png_bytes(width: int, height: int, value: int = 128) -> bytes:
    """A grayscale PNG file of the given size, in memory."""
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


def train_outputs(result, folder: Path) -> tuple[dict, dict, list[dict], list[dict]]:
    """(checkpoint as saved and reloaded, metrics, history, per-step history) of a train_model Result."""
    import torch
    path = Path(folder) / "trained-checkpoint.pt"
    result.files["checkpoint"](path)
    return (torch.load(path, weights_only=True), result.json["metrics"], result.tables["history"],
            result.tables["steps"])


# pipeline outputs: a copied project builds its own
GENERATED = ("dvc.lock", "metrics/", "plots/", "report/", "data/raw", "data/prepared", "models/")


def tracked_files() -> list[str]:
    """The checkout's source files (committed or not, ignored ones left out), without its outputs."""
    import subprocess
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [f for f in listed if not f.startswith(GENERATED) and (REPO / f).is_file()]


def copy_project(project: Path, models: list[str] | None = None, **sections: dict) -> Path:
    """The project's sources copied to `project`, params.yaml set for generated data (no checksums)
    with `sections` merged into its sections (and `models` replacing the model list)."""
    import shutil
    import yaml
    for name in tracked_files():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, project / name)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["verify_checksums"] = False  # generated data has no known checksum
    if models is not None:
        params["models"] = models
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def pipeline_env(mirror: Path, pythonpath: str = str(REPO / "src"), threads: int | None = None) -> dict:
    """The environment a copied project's dvc and git commands run in: this interpreter's tools first,
    the generated mirror, no analytics, a git identity; `threads` per process when given."""
    import os
    import sys
    env = {**os.environ, "CNNLAB_DATA_MIRROR": str(mirror),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PYTHONPATH": pythonpath}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@pytest.fixture(autouse=True)
def _stages_never_end_pytest(monkeypatch):
    """`stage.run` ends a stage script's process when main returns; should it ever take a test for a
    script, pytest would exit 0 with the remaining tests unrun. Here it fails the test instead."""
    from cnnlab.plumbing import stage

    def refuse():
        raise AssertionError("stage.run tried to end the pytest process (stage._is_the_script misjudged)")

    monkeypatch.setattr(stage, "_end_process", refuse)
