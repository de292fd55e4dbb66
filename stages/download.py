"""Fetch the raw dataset files into data/raw (from $CNNLAB_DATA_MIRROR when set), verified."""
from pathlib import Path

from cnnlab import datasets, params
from cnnlab.outputs import run_stage, staged_outputs


def main():
    data = params.load()["data"]
    mirror = datasets.mirror_from_env()
    with staged_outputs() as out:
        raw = datasets.fetch(data["dataset"], out.path(Path("data/raw")), mirror, data["verify_checksums"],
                             data["path"], data["image_size"])
        files = len(list(raw.iterdir()))
    if data["dataset"] == "folder":
        print(f"download: decoded the images under {data['path']} at {data['image_size']}x{data['image_size']}")
        return
    checked = "verified" if data["verify_checksums"] else "NOT verified (data.verify_checksums: false)"
    print(f"download: {data['dataset']} from {mirror or 'the network'}: {files} files, {checked}")


if __name__ == "__main__":
    run_stage(main)
