"""A folder whose decoded images are several times a real memory limit (a cgroup made here) goes through
download, prepare, train, evaluate and analyze under that limit, and learns."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_project, pipeline_env

# the analyze stage takes about 850 MB at this image size whatever the split sizes: its libraries (about
# 420 MB) and its per-image work (explanations of 196,608 inputs, the noise study's copy of the test split)
LIMIT = 5 * 2**28  # 1.25 GiB: the analyze stage alone needs about 1 GiB at 256 pixels (its imports, its passes)
# 4 classes of 5,500 images, 192 KiB each decoded: train and val hold 20,900 of them (3.8 GiB, 3.1 times
# the limit); the test split is cut to 160 (see docs/own-images.md)
IMAGE_SIZE, PER_CLASS, TEST_SIZE = 256, 5500, 160
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (128, 128, 128)]
STAGES = ["download.py", "prepare.py", "train.py mlp", "evaluate.py mlp", "analyze.py mlp"]


def memory_cgroup(limit: int) -> tuple[Path | None, str]:
    """A new cgroup under this process's own, limited to `limit` bytes: (its cgroup.procs, "") or
    (None, why it cannot be made). cgroup v2 where its memory controller is enabled, else v1."""
    from cnnlab.runtime import own_cgroups
    tried = []
    for parent, _ in own_cgroups():
        version2 = (parent / "cgroup.controllers").exists()
        if version2 and "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            tried.append(f"{parent}: the memory controller is not enabled for its children")
            continue
        child = parent / f"cnnlab-test-{uuid.uuid4().hex[:8]}"
        try:
            child.mkdir()
            (child / ("memory.max" if version2 else "memory.limit_in_bytes")).write_text(str(limit))
            return child / "cgroup.procs", ""
        except OSError as err:
            tried.append(f"{child}: {err.strerror}")
            if child.exists():
                child.rmdir()
    return None, "; ".join(tried) or "no cgroup file system mounted"


def colour_folder(base: Path) -> None:
    """4 classes of small PNG images, each a class's colour under noise: learnable, and decoded at
    IMAGE_SIZE far larger than their files."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for label, colour in enumerate(COLOURS):
        (base / f"class{label}").mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.integers(-90, 90, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(base / f"class{label}" / f"{i}.png")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="cgroups are Linux's")
def test_folder_several_times_the_memory_limit_runs_and_learns(tmp_path):
    procs, why = memory_cgroup(LIMIT)
    if procs is None:
        pytest.skip(f"cannot make a memory cgroup here: {why}")
    try:
        colour_folder(tmp_path / "images")
        project = copy_project(tmp_path / "project", models=["mlp"],
                               data=dict(dataset="folder", path=str(tmp_path / "images"), image_size=IMAGE_SIZE),
                               prepare=dict(test_fraction=0.05, test_size=TEST_SIZE), evaluate=dict(batch_size=32),
                               train=dict(epochs=1, batch_size=32, eval_batch_size=32, progress=False),
                               mlp=dict(hidden=8), analyze=dict(tsne_samples=64, explain_samples=4,
                                                                noise_levels=[0, 0.1], batch_size=32))
        env = pipeline_env(tmp_path, threads=2)  # no mirror: a folder is read from data.path
        script = " && ".join(f"python stages/{stage}" for stage in STAGES)
        # the shell joins the cgroup before it starts anything: every stage and worker is under the limit
        result = subprocess.run(["sh", "-c", f"echo $$ > {procs} && {script}"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        peak = _peak(procs.parent)
        decoded = sum(f.stat().st_size for f in (project / "data" / "prepared").glob("*_images.npy"))
        assert decoded > 3 * LIMIT, decoded
        assert peak is None or peak <= LIMIT
        print(f"decoded {decoded / 2**20:,.0f} MiB under a {LIMIT / 2**20:,.0f} MiB limit; peak "
              f"{'unknown' if peak is None else f'{peak / 2**20:,.0f} MiB'}")
        accuracy = json.loads((project / "metrics" / "test" / "mlp.json").read_text())["accuracy"]
        assert accuracy > 0.5, accuracy  # chance is 0.25
        assert (project / "metrics" / "analysis" / "mlp.json").exists()
    finally:
        _remove(procs.parent)


def _remove(cgroup: Path) -> None:
    """rmdir, once the last process that ran in the cgroup is gone (the kernel says busy until then)."""
    import time
    for _ in range(50):
        try:
            return cgroup.rmdir()
        except OSError:
            time.sleep(0.1)
    cgroup.rmdir()


def _peak(cgroup: Path) -> int | None:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (cgroup / name).exists():
            return int((cgroup / name).read_text())
    return None
