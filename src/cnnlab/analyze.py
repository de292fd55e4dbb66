"""Looking inside a trained model: feature maps, learned filters, t-SNE of embeddings, Grad-CAM,
the most confident mistakes, and accuracy under salt-and-pepper noise.

Everything here works on any model of the zoo: the layers an analysis needs by role (the head
whose input is the embedding, the layer Grad-CAM explains) are the ones the model's spec declares
(cnnlab/models/); the rest are found by type and by the order they run in. The probes come first,
then the analyses: each one reads the model and its test images (a Subject) and adds figures,
tables and numbers to the Findings. `analyze_model` runs them all, in the order of ANALYSES.

To add an analysis: a function `(subject, findings) -> None` decorated with @analysis. Its
figures land in plots/analysis/<model>/, its tables in plots/tables/<model>/ and its numbers in
metrics/analysis/<model>.json; the report shows them, and a table declared with `plots=` (x and y
columns) is drawn by `dvc plots` for every model. No stage, dvc.yaml or report edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score
from torch import nn

from cnnlab import explain, figures, models
from cnnlab.augment import salt_and_pepper
from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.engine.checkpoints import load_checkpoint
from cnnlab.engine.inference import autocast_dtype, embeddings, layout, score
from cnnlab.results import Result
from cnnlab.prepare import load_prepared, one_per_class
from cnnlab.runtime import pick_device


# --- probes -------------------------------------------------------------------------------------

def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


@torch.no_grad()
def capture_activations(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, output) of every leaf module, in the order they ran, from forward hooks.

    The hooks are removed before returning, whatever happens, so the model is left as it was.
    Outputs are cloned: a later in-place op must not change what was recorded.
    """
    records: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for name, module in leaf_modules(model):
        def hook(mod, inputs, output, name=name):
            records.append((name, mod, output.detach().clone()))
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return records


def mass_on(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The share of each map's total heat that falls inside `mask` (the digit's pixels, say)."""
    return (cam * mask).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-12)


def most_confused(probs: torch.Tensor, labels: torch.Tensor, count: int) -> list[dict]:
    """The misclassified test images the model was most sure about."""
    confidence, predicted = probs.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [{"index": int(i), "actual": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": float(confidence[i])} for i in order]


def image_likeness(images: torch.Tensor, activation: torch.Tensor) -> float | None:
    """Mean correlation between each input image and its layer output (mean |activation| over channels,
    resized to the input): near 1 while a layer's maps still look like the input, near 0 after."""
    if activation.dim() != 4:
        return None
    maps = F.interpolate(activation.float().abs().mean(1, keepdim=True), size=images.shape[-2:], mode="bilinear",
                         align_corners=False).flatten(1)
    pixels = images.float().mean(1, keepdim=True).flatten(1)
    maps, pixels = maps - maps.mean(1, keepdim=True), pixels - pixels.mean(1, keepdim=True)
    denominator = (maps.norm(dim=1) * pixels.norm(dim=1)).clamp_min(1e-12)
    return float(((maps * pixels).sum(1) / denominator).mean())


def tsne_2d(features: np.ndarray, perplexity: float, seed: int, iterations: int = 1000) -> np.ndarray:
    perplexity = min(perplexity, (len(features) - 1) / 3)  # scikit-learn requires perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                max_iter=iterations).fit_transform(features)


def accuracy_under_noise(model: nn.Module, test: DeviceSplit, levels: list[float], batch_size: int,
                         seed: int, dtype: torch.dtype | None = None, flip: bool = False) -> dict[str, float]:
    """Test accuracy with salt-and-pepper noise at each level (the same noise for every model: drawn
    on the CPU from `seed`, whatever the device)."""
    result = {}
    for level in levels:
        noisy = salt_and_pepper(test.images.cpu(), level, torch.Generator().manual_seed(seed))
        result[f"{level:g}"] = score(model, test.with_images(noisy), batch_size, dtype, keep=False, flip=flip).accuracy
    return result


# --- the analyses -------------------------------------------------------------------------------

@dataclass
class Subject:
    """A trained model and the test images it is looked at with."""
    name: str
    model: nn.Module
    spec: models.ModelSpec     # its declared head and attribution layer
    classes: list[str]
    test: DeviceSplit
    labels: torch.Tensor       # test labels, on the CPU
    options: dict              # params.yaml's analyze section
    dtype: torch.dtype | None  # the autocast it was trained with
    flip: bool                 # whether it predicts with its mirror image too (train.flip_tta)
    samples: torch.Tensor      # a few test images per class, for the per-image figures
    row_labels: list[str]      # their classes' names

    @property
    def sample_images(self) -> torch.Tensor:
        return self.test.images.index_select(0, self.samples.to(self.test.images.device))


@dataclass
class Findings:
    figures: dict = field(default_factory=dict)  # relative path -> matplotlib figure
    tables: dict = field(default_factory=dict)   # name -> list of rows
    metrics: dict = field(default_factory=dict)

    def result(self) -> Result:
        """By the analyze stage's output roles; the metrics say which tables `dvc plots` draws."""
        plotted = {name: plot for analysis in ANALYSES for name, plot in analysis.plots.items()
                   if name in self.tables}
        return Result(json={"metrics": {**self.metrics, "plots": plotted}},
                      tables={"tables": self.tables}, figures={"figures": self.figures})


@dataclass(frozen=True)
class Analysis:
    run: Callable[["Subject", Findings], None]
    plots: dict[str, dict]  # table name -> {"x": column, "y": column, "title": ...}: drawn by dvc plots


ANALYSES: list[Analysis] = []


def analysis(function=None, *, plots: dict[str, dict] | None = None):
    """Register an analysis (run in the order registered). `plots`: which of its tables `dvc plots`
    draws, one line per model: {table: {"x": column, "y": column, "title": text}}."""
    def register(run):
        ANALYSES.append(Analysis(run, plots or {}))
        return run
    return register(function) if function is not None else register


@analysis
def feature_maps(s: Subject, found: Findings) -> None:
    """Every layer's output for the sample images, and how much each still looks like the input."""
    raw = s.sample_images
    layers = []
    for position, (layer, module, output) in enumerate(capture_activations(s.model, s.test.normalise(raw)), start=1):
        kind = type(module).__name__
        layers.append({"layer": layer, "type": kind, "shape": "x".join(map(str, output.shape[1:])),
                       "image_likeness": image_likeness(raw, output)})
        found.figures[f"maps/{position:02d}_{layer}_{kind}.png"] = figures.feature_map_figure(
            f"{s.name} layer {layer} ({kind})", output.cpu(), s.row_labels, s.options["max_channels"])
    found.tables["layers"] = layers


@analysis
def learned_filters(s: Subject, found: Findings) -> None:
    convs = [(n, m) for n, m in s.model.named_modules() if isinstance(m, nn.Conv2d)]
    for i, (layer, conv) in enumerate(convs):
        found.figures[f"filters/{layer}.png"] = figures.filters_figure(
            f"{s.name} conv {layer}", conv.weight, i == 0, s.options["max_channels"])
    found.metrics["last_conv"] = convs[-1][0] if convs else None


@analysis
def embedding_separation(s: Subject, found: Findings) -> None:
    """t-SNE of the penultimate features of a seeded test subsample, and silhouette scores of those
    features and of the raw pixels (how much better than the input the classes are separated)."""
    seed = s.options["seed"]
    subsample = torch.randperm(len(s.labels), generator=torch.Generator().manual_seed(seed))
    subsample = subsample[:s.options["tsne_samples"]].sort().values
    features = embeddings(s.model, s.model.get_submodule(s.spec.head), s.test, subsample, s.options["batch_size"],
                          s.dtype).numpy()
    pixels = s.test.normalise(s.test.images.index_select(0, subsample.to(s.test.images.device))).flatten(1)
    sub_labels = s.labels[subsample].numpy()
    silhouette = float(silhouette_score(features, sub_labels))
    silhouette_pixels = float(silhouette_score(pixels.cpu().numpy(), sub_labels))
    points = tsne_2d(features, s.options["tsne_perplexity"], seed, s.options["tsne_iterations"])
    found.figures["tsne.png"] = figures.tsne_figure(
        points, sub_labels, s.classes, f"{s.name}: t-SNE of {features.shape[1]}-d penultimate features, "
        f"{len(sub_labels)} test images\nsilhouette {silhouette:.3f} (raw pixels {silhouette_pixels:.3f})")
    found.tables["tsne"] = [{"x": float(p[0]), "y": float(p[1]), "label": s.classes[int(c)], "index": int(i)}
                            for p, c, i in zip(points, sub_labels, subsample)]
    found.metrics.update(silhouette=silhouette, silhouette_pixels=silhouette_pixels,
                         tsne_samples=int(len(sub_labels)), feature_dim=int(features.shape[1]))


@analysis
def gradcam_maps(s: Subject, found: Findings) -> None:
    """Grad-CAM and Guided Grad-CAM of the sample images, and how much of each map's heat lies on
    the object (the brighter-than-average pixels: a digit's strokes)."""
    found.metrics["gradcam_layer"] = None  # a network without spatial maps has no Grad-CAM
    if s.spec.attribution_layer is None:
        return
    raw = s.sample_images
    cam, guided, predicted, layer = explain.guided_grad_cam(s.model, s.spec.attribution_layer, s.test.normalise(raw))
    grey = raw.float().mean(1)
    on_object = (grey > grey.flatten(1).mean(1).view(-1, 1, 1)).float()
    found.metrics.update(gradcam_layer=layer, gradcam_object_area=float(on_object.mean()),
                         gradcam_object_mass=float(mass_on(cam, on_object).mean()),
                         guided_gradcam_object_mass=float(mass_on(guided, on_object).mean()))
    captions = [f"true {s.row_labels[i]}, pred {s.classes[int(predicted[i])]}" for i in range(len(s.samples))]
    found.figures["gradcam.png"] = figures.gradcam_figure(
        raw.cpu(), cam.cpu(), guided.cpu(), captions,
        f"{s.name}: Grad-CAM on {layer} (top) and Guided Grad-CAM (bottom), for the predicted class")


@analysis
def confident_mistakes(s: Subject, found: Findings) -> None:
    probs = score(s.model, s.test, s.options["batch_size"], s.dtype, flip=s.flip).probabilities
    mistakes = most_confused(probs, s.labels, s.options["top_confused"])
    if mistakes:
        images = s.test.images.index_select(0, torch.tensor([m["index"] for m in mistakes],
                                                            device=s.test.images.device)).cpu()
        captions = [f"{s.classes[m['actual']]} as {s.classes[m['predicted']]} ({m['confidence']:.0%})"
                    for m in mistakes]
        found.figures["confused.png"] = figures.image_grid(
            images, captions, min(len(mistakes), 8), f"{s.name}: most confident mistakes (true as predicted)")
        found.tables["mistakes"] = [{**m, "actual": s.classes[m["actual"]], "predicted": s.classes[m["predicted"]]}
                                    for m in mistakes]


@analysis(plots={
    "deletion": {"x": "fraction", "y": "probability", "series": "method",
                 "title": "explanations: class probability as the top-ranked pixels are deleted (lower: more faithful)"},
    "insertion": {"x": "fraction", "y": "probability", "series": "method",
                  "title": "explanations: class probability as the top-ranked pixels are inserted (higher: more faithful)"}})
def explanations(s: Subject, found: Findings) -> None:
    """Every attribution method that applies to the model, on a seeded test subset, scored by
    deletion and insertion AUC against a random map and by the model-randomisation check
    (cnnlab.explain); the maps of the sample images side by side."""
    seed = s.options["seed"]
    subset = torch.randperm(len(s.labels), generator=torch.Generator().manual_seed(seed + 1))[:s.options["explain_samples"]]
    x = s.test.normalise(s.test.images.index_select(0, subset.sort().values.to(s.test.images.device)))
    named = explain.methods(s.spec.attribution_layer, seed)
    numbers, curves, cascade_rows, _ = explain.assess(s.model, x, named, seed)
    found.metrics["explanations"] = numbers
    found.metrics["explanation_best"] = explain.best(numbers)
    found.tables["deletion"] = [{k: r[k] for k in ("method", "fraction", "probability")} for r in curves
                                if r["curve"] == "deletion"]
    found.tables["insertion"] = [{k: r[k] for k in ("method", "fraction", "probability")} for r in curves
                                 if r["curve"] == "insertion"]
    found.tables["randomization"] = cascade_rows
    raw = s.sample_images
    images = s.test.normalise(raw)
    with torch.no_grad():
        predicted = s.model(images).argmax(1)
    shown = {name: method(s.model, images, predicted).detach().cpu() for name, method in named.items() if name != "random"}
    found.figures["explanations.png"] = figures.attribution_figure(
        raw.cpu(), shown, s.row_labels, f"{s.name}: what each method says the prediction rests on")


@analysis(plots={"noise": {"x": "noise", "y": "accuracy", "title": "test accuracy under salt-and-pepper noise"}})
def noise_robustness(s: Subject, found: Findings) -> None:
    noise = accuracy_under_noise(s.model, s.test, s.options["noise_levels"], s.options["batch_size"],
                                 s.options["seed"], s.dtype, s.flip)
    found.metrics["noise_accuracy"] = noise
    found.tables["noise"] = [{"noise": float(k), "accuracy": v} for k, v in noise.items()]


def analyze_model(name: str, checkpoint_path: Path, prepared_dir: Path, options: dict,
                  max_device_bytes: int | None = None) -> Result:
    """Every figure, table and number the analyze stage writes for one model, by output role."""
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint_path, device, expected=name)
    data = load_prepared(prepared_dir, ("test",))
    labels = data["test"][1]
    samples = one_per_class(labels, options["samples_per_class"], len(ckpt["classes"]), options["seed"])
    test = DeviceSplit(*data["test"], ckpt["mean"], ckpt["std"], device, layout(model),
                       budget=DeviceBudget(device, max_device_bytes))
    subject = Subject(name, model, models.spec(name), ckpt["classes"], test, labels, options,
                      autocast_dtype(ckpt.get("precision", "fp32"), device), ckpt.get("flip_tta", False), samples,
                      [ckpt["classes"][int(labels[i])] for i in samples])
    found = Findings()
    for registered in ANALYSES:
        registered.run(subject, found)
    return found.result()
