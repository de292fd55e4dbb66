"""Decode data/raw to uint8 tensors, subsample, split off validation, compute statistics."""
from cnnlab import params, paths, stage
from cnnlab.datasets import DATASETS, formats as datasets
from cnnlab.prepare import prepare, save_prepared


def main():
    loaded = params.for_stage("prepare")
    name, size = loaded["data"]["dataset"], loaded["data"]["image_size"]
    params.require_choice("data.dataset", name, DATASETS)
    present = datasets.splits(name, paths.RAW)
    decoded = {split: datasets.load_split(name, paths.RAW, split, size) for split in present}
    # a folder without a test split comes as one set (`all`): prepare carves test (and val) from it
    splits = prepare(decoded.get("train", decoded.get("all")), decoded.get("test"),
                     datasets.class_names(name, paths.RAW), loaded["prepare"], decoded.get("val"))
    splits["info"]["dataset"] = name
    with stage.outputs() as out:
        save_prepared(splits, out.path(paths.PREPARED))
    dropped = splits["info"]["duplicates_dropped"]
    print(f"prepare: {name} " + ", ".join(f"{k} {v}" for k, v in splits["info"]["sizes"].items())
          + f"; exact duplicates dropped from train: {dropped['repeated_in_train']} repeated, "
            f"{dropped['train_also_in_test']} also in test")

if __name__ == "__main__":
    stage.run(main)
