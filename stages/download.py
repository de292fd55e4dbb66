"""Fetch the raw dataset files into data/raw (from $CNNLAB_DATA_MIRROR when set), verified."""
import json

from cnnlab.plumbing import stage  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from cnnlab.datasets import DATASETS, formats as datasets
from cnnlab.datasets.files import mirror_from_env


def main():
    data = params.for_stage("download")["data"]
    params.require_choice("data.dataset", data["dataset"], DATASETS)
    mirror = mirror_from_env()
    with stage.outputs() as out:
        raw = datasets.fetch(data["dataset"], out.path(paths.RAW), mirror, data["verify_checksums"], data["path"])
        files = sum(1 for p in raw.rglob("*") if p.is_file())
        found = json.loads((raw / "manifest.json").read_text()) if data["dataset"] == "folder" else None
    if found:
        card = found.get("card", {})
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in card.get("skipped", {}).items() if n)
        turned = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in
                           {"rotated by EXIF": card.get("rotated", 0), **card.get("converted", {})}.items() if n)
        print(f"download: {data['path']}: " + ", ".join(f"{split} {n} images" for split, n in found["images"].items())
              + f" ({'grayscale' if found['grayscale'] else 'colour'}); skipped: {skipped or 'nothing'}"
              + (f"; {turned}" if turned else "") + " (metrics/data.json: card)")
        return
    checked = "verified" if data["verify_checksums"] else "NOT verified (data.verify_checksums: false)"
    print(f"download: {data['dataset']} from {mirror or 'the network'}: {files} files, {checked}")


if __name__ == "__main__":
    stage.run(main)
