"""Once per prepared dataset: a grid of sample training images per class, and the class counts used."""
import matplotlib.pyplot as plt

from cnnlab import params
from cnnlab.analyze import samples_figure
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.prepare import load_prepared


def main():
    options = params.load()["analyze"]
    data = load_prepared("data/prepared", ("train",))
    images, labels = data["train"]
    fig = samples_figure(images, labels, data["info"]["classes"], 8, options["seed"])
    with staged_outputs() as out:
        out.figure("plots/analysis/samples.png", fig, dpi=options["dpi"])
        info = data["info"]
        out.json("metrics/data.json", {"classes": info["classes"], "sizes": info["sizes"],
                                       "class_counts": info["class_counts"]})
    plt.close("all")
    print(f"samples: {len(data['info']['classes'])} classes")


if __name__ == "__main__":
    run_stage(main)
