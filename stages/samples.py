"""Once per prepared dataset: a grid of sample training images per class, and the class counts used."""
from cnnlab import params, paths
from cnnlab.figures import samples_figure
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.prepare import load_prepared, one_per_class

PER_CLASS = 8


def main():
    options = params.for_stage("samples")["analyze"]
    data = load_prepared(paths.PREPARED, ("train",))
    (images, labels), info = data["train"], data["info"]
    index = one_per_class(labels, PER_CLASS, len(info["classes"]), options["seed"])
    target = paths.outputs("samples")
    with staged_outputs() as out:
        out.figure(target.figure, samples_figure(images, labels, info["classes"], index, PER_CLASS), dpi=options["dpi"])
        out.json(target.data, {"classes": info["classes"], "sizes": info["sizes"], "class_counts": info["class_counts"],
                               "duplicates_dropped": info["duplicates_dropped"]})
    print(f"samples: {len(info['classes'])} classes")


if __name__ == "__main__":
    run_stage(main)
