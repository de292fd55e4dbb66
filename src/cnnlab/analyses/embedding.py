"""t-SNE of the penultimate features of a seeded test subsample, and silhouette scores of those features
and of the raw pixels: how much better than the input the classes are separated."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from cnnlab import figures
from cnnlab.engine.inference import embeddings

TITLE = "Embedding"


def tsne_2d(features: np.ndarray, perplexity: float, seed: int, iterations: int = 1000) -> np.ndarray:
    perplexity = min(perplexity, (len(features) - 1) / 3)  # scikit-learn requires perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                max_iter=iterations).fit_transform(features)


def run(s, findings, section) -> None:
    seed = s.options["seed"]
    subsample = torch.randperm(len(s.labels), generator=torch.Generator().manual_seed(seed))
    subsample = subsample[:s.options["tsne_samples"]].sort().values
    features = embeddings(s.model, s.model.get_submodule(s.spec.path(s.spec.head)), s.test, subsample, s.options["batch_size"],
                          s.dtype).numpy()
    pixels = s.test.normalise(s.test.images.index_select(0, subsample.to(s.test.images.device))).flatten(1)
    sub_labels = s.labels[subsample].numpy()
    silhouette = float(silhouette_score(features, sub_labels))
    silhouette_pixels = float(silhouette_score(pixels.cpu().numpy(), sub_labels))
    points = tsne_2d(features, s.options["tsne_perplexity"], seed, s.options["tsne_iterations"])
    findings.figures["tsne.png"] = figures.tsne_figure(
        points, sub_labels, s.classes, f"{s.name}: t-SNE of {features.shape[1]}-d penultimate features, "
        f"{len(sub_labels)} test images\nsilhouette {silhouette:.3f} (raw pixels {silhouette_pixels:.3f})")
    findings.tables["tsne"] = [{"x": float(p[0]), "y": float(p[1]), "label": s.classes[int(c)], "index": int(i)}
                               for p, c, i in zip(points, sub_labels, subsample)]
    findings.metrics.update(silhouette=silhouette, silhouette_pixels=silhouette_pixels,
                            tsne_samples=int(len(sub_labels)), feature_dim=int(features.shape[1]))
    findings.scores["silhouette"] = round(silhouette, 3)
    findings.compared["tsne.png"] = "tsne.png"
    ratio = f" ({silhouette / silhouette_pixels:.1f}x)" if silhouette_pixels > 0 else ""
    section["text"].append(
        f"Its {features.shape[1]}-d penultimate features separate the classes with a silhouette of "
        f"{silhouette:.3f}, against {silhouette_pixels:.3f} for the raw pixels of the same {len(sub_labels)} "
        f"test images{ratio}.")
    section["figures"].append("tsne.png")
