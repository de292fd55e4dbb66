"""Once per prepared dataset: a grid of sample training images per class, the class counts used, and
the data card (what download and prepare found and did: files skipped, images turned, converted, resized)."""
from cnnlab.plumbing import stage  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from cnnlab.figures import samples_figure
from cnnlab.prepare import load_prepared, one_per_class

PER_CLASS = 8


def main():
    options = params.for_stage("samples")["analyze"]
    data = load_prepared(paths.PREPARED, ("train",))
    (images, labels), info = data["train"], data["info"]
    index = one_per_class(labels, PER_CLASS, len(info["classes"]), options["seed"])
    target = paths.outputs("samples")
    with stage.outputs() as out:
        out.figure(target.figure, samples_figure(images, labels, info["classes"], index, PER_CLASS), dpi=options["dpi"])
        out.json(target.data, {"classes": info["classes"], "sizes": info["sizes"], "class_counts": info["class_counts"],
                               "duplicates_dropped": info["duplicates_dropped"],
                               # what download and prepare found and did (data from before the card: none)
                               "card": info.get("card", {})})
    print(f"samples: {len(info['classes'])} classes")


if __name__ == "__main__":
    stage.run(main)
