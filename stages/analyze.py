"""Look inside one trained model: feature maps, filters, t-SNE, Grad-CAM, mistakes, noise robustness."""
from cnnlab import params, paths
from cnnlab.analyze import analyze_model
from cnnlab.outputs import model_argument, run_stage, staged_outputs


def main():
    name = model_argument("analyze")
    stage = params.for_stage("analyze", name)
    options = stage["analyze"]
    found = analyze_model(name, paths.outputs("train", name).checkpoint, paths.PREPARED, options,
                          stage["data"]["max_device_bytes"])
    target = paths.outputs("analyze", name)
    with staged_outputs() as out:
        folder = out.path(target.figures)  # the whole folder is replaced at once
        for relative, fig in found.figures.items():
            out.figure(folder / relative, fig, dpi=options["dpi"], staged=False)
        out.csv(target.tsne, found.tables["tsne"])
        out.csv(target.layers, found.tables["layers"])
        out.csv(target.mistakes, found.tables["mistakes"], ["index", "actual", "predicted", "confidence"])
        out.csv(target.noise, found.tables["noise"])
        out.json(target.metrics, found.metrics)
    m = found.metrics
    noise = ", ".join(f"{level}: {acc:.3f}" for level, acc in m["noise_accuracy"].items())
    print(f"analyze: {name} silhouette {m['silhouette']:.3f} (pixels {m['silhouette_pixels']:.3f}); "
          f"accuracy under noise {noise}")


if __name__ == "__main__":
    run_stage(main)
