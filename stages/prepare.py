"""Decode data/raw to uint8 images, subsample, split off validation, compute statistics; write each split
as .npy files a chunk at a time."""
from cnnlab.plumbing import stage  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from cnnlab.datasets import DATASETS, formats as datasets
from cnnlab.prepare import save_prepared, select_splits


def main():
    loaded = params.for_stage("prepare")
    name, size = loaded["data"]["dataset"], loaded["data"]["image_size"]
    params.require_choice("data.dataset", name, DATASETS)
    train, test, classes, val = datasets.decode_all(name, paths.RAW, size)
    splits = select_splits(train, test, classes, loaded["prepare"], val)
    splits["info"]["dataset"] = name
    with stage.outputs() as out:
        save_prepared(splits, out.path(paths.PREPARED))
    dropped = splits["info"]["duplicates_dropped"]
    print(f"prepare: {name} " + ", ".join(f"{k} {v}" for k, v in splits["info"]["sizes"].items())
          + f"; exact duplicates dropped from train: {dropped['repeated_in_train']} repeated, "
            f"{dropped['train_also_in_test']} also in test")

if __name__ == "__main__":
    stage.run(main)
