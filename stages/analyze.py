"""Look inside one trained model: feature maps, filters, t-SNE, Grad-CAM, mistakes, noise robustness."""
import sys
from pathlib import Path

import matplotlib.pyplot as plt

from cnnlab import CnnlabError, params
from cnnlab.analyze import analyze_model
from cnnlab.models import MODELS
from cnnlab.outputs import run_stage, staged_outputs


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise CnnlabError(f"usage: analyze.py MODEL, MODEL one of {', '.join(MODELS)}")
    name = sys.argv[1]
    options = params.load()["analyze"]
    result = analyze_model(name, Path(f"models/{name}.pt"), Path("data/prepared"), options)
    with staged_outputs() as out:
        folder = out.path(f"plots/analysis/{name}")  # the whole folder is replaced at once
        for relative, fig in result["figures"].items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(folder / relative, dpi=options["dpi"], bbox_inches="tight")
            plt.close(fig)
        out.csv(f"plots/analysis/tsne/{name}.csv", result["tsne"])
        out.csv(f"plots/analysis/layers/{name}.csv", result["layers"])
        out.csv(f"plots/analysis/mistakes/{name}.csv", result["mistakes"],
                ["index", "actual", "predicted", "confidence"])
        out.csv(f"plots/analysis/noise/{name}.csv", result["noise"])
        out.json(f"metrics/analysis/{name}.json", result["metrics"])
    m = result["metrics"]
    noise = ", ".join(f"{level}: {acc:.3f}" for level, acc in m["noise_accuracy"].items())
    print(f"analyze: {name} silhouette {m['silhouette']:.3f} (pixels {m['silhouette_pixels']:.3f}); "
          f"accuracy under noise {noise}")


if __name__ == "__main__":
    run_stage(main)
