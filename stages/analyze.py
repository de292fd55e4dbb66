"""Look inside one trained model: every analysis of the registry (cnnlab.analyze.ANALYSES)."""
from cnnlab.plumbing import stage  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from cnnlab.analyze import analyze_model
from cnnlab.results import write_result


def main():
    name = params.model_argument("analyze")
    loaded = params.for_stage("analyze", name)
    options = loaded["analyze"]
    result = analyze_model(name, paths.outputs("train", name).checkpoint, paths.PREPARED, options,
                           loaded["data"]["max_device_bytes"])
    with stage.outputs() as out:
        write_result(out, "analyze", result, name, dpi=options["dpi"])
    m = result.json["metrics"]
    noise = ", ".join(f"{level}: {acc:.3f}" for level, acc in m["noise_accuracy"].items())
    print(f"analyze: {name} silhouette {m['silhouette']:.3f} (pixels {m['silhouette_pixels']:.3f}); "
          f"accuracy under noise {noise}")


if __name__ == "__main__":
    stage.run(main)
