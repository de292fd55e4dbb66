"""Decode data/raw to uint8 tensors, subsample, split off validation, compute statistics."""
from pathlib import Path

from cnnlab import datasets, params
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.prepare import prepare, save_prepared


def main():
    loaded = params.load()
    name = loaded["data"]["dataset"]
    raw = Path("data/raw")
    splits = prepare(datasets.load_split(name, raw, "train"), datasets.load_split(name, raw, "test"),
                     datasets.class_names(name, raw), loaded["prepare"])
    splits["info"]["dataset"] = name
    with staged_outputs() as out:
        save_prepared(splits, out.path(Path("data/prepared")))
    print(f"prepare: {name} " + ", ".join(f"{k} {v}" for k, v in splits["info"]["sizes"].items()))


if __name__ == "__main__":
    run_stage(main)
