"""Every attribution method that applies to the model, on a seeded test subset, scored by deletion and
insertion AUC against a random map and by the model-randomisation check (cnnlab.explain); the maps of
the sample images side by side."""

from __future__ import annotations

import torch

from cnnlab import explain, figures

TITLE = "Explanations you can trust"
PLOTS = {
    "deletion": {"x": "fraction", "y": "probability", "series": "method",
                 "title": "explanations: class probability as the top-ranked pixels are deleted (lower: more faithful)"},
    "insertion": {"x": "fraction", "y": "probability", "series": "method",
                  "title": "explanations: class probability as the top-ranked pixels are inserted (higher: more faithful)"},
}


def verdict(method: str, scored: dict) -> str:
    """What an attribution method's numbers say about it: explain.assess's verdict word against the
    random map, and the randomisation check."""
    if method == "random":
        return "baseline (ignores the model)"
    return scored["faithfulness"] + ("" if scored["passes_randomization"] else ", fails the randomisation check")


def interval(scored: dict, curve: str) -> str:
    return f"{scored[f'{curve}_minus_random_low']:+.4f} to {scored[f'{curve}_minus_random_high']:+.4f}"


def run(s, findings, section) -> None:
    seed = s.options["seed"]
    subset = torch.randperm(len(s.labels), generator=torch.Generator().manual_seed(seed + 1))[:s.options["explain_samples"]]
    x = s.test.normalise(s.test.images.index_select(0, subset.sort().values.to(s.test.images.device)))
    named = explain.methods(s.spec.path(s.spec.attribution_layer), seed)
    numbers, curves, cascade_rows, _ = explain.assess(s.model, x, named, seed)
    best = explain.best(numbers)
    findings.metrics["explanations"] = numbers
    findings.metrics["explanation_best"] = best
    for curve in ("deletion", "insertion"):
        findings.tables[curve] = [{k: r[k] for k in ("method", "fraction", "probability")} for r in curves
                                  if r["curve"] == curve]
    findings.tables["randomization"] = cascade_rows
    findings.tables["verdicts"] = [{"method": method, "deletion AUC (lower: better)": n["deletion_auc"],
                                    "insertion AUC (higher: better)": n["insertion_auc"],
                                    "deletion AUC minus random's (97.5% interval)": interval(n, "deletion"),
                                    "insertion AUC minus random's (97.5% interval)": interval(n, "insertion"),
                                    "images": n["images"],
                                    "rank correlation after randomising the weights": n["randomized_spearman"],
                                    "verdict": verdict(method, n) + (" (best)" if method == best else "")}
                                   for method, n in numbers.items()]
    if best:  # the most faithful trusted method, and how faithful
        findings.scores.update(explainer=best, deletion_auc=round(numbers[best]["deletion_auc"], 3),
                               insertion_auc=round(numbers[best]["insertion_auc"], 3))
    raw = s.sample_images
    images = s.test.normalise(raw)
    with torch.no_grad():
        predicted = s.model(images).argmax(1)
    shown = {name: method(s.model, images, predicted).detach().cpu() for name, method in named.items() if name != "random"}
    findings.figures["explanations.png"] = figures.attribution_figure(
        raw.cpu(), shown, s.row_labels, f"{s.name}: what each method says the prediction rests on")
    findings.compared["explanations.png"] = "explanations.png"
    section["text"].append(summary(numbers, best))
    section["tables"].append("verdicts")
    section["figures"].append("explanations.png")


def summary(numbers: dict, best: str | None) -> str:
    methods = [m for m in numbers if m != "random"]
    by_word = {word: [m for m in methods if numbers[m]["faithfulness"] == word]
               for word in (explain.FAITHFUL, explain.NO_BETTER, explain.UNTOLD)}
    failed = [m for m in methods if not numbers[m]["passes_randomization"]]
    random = numbers["random"]
    said = (f"Each verdict rests on {random['images']} test images: a method is faithful only when the interval "
            f"(paired bootstrap over the images, 97.5% for each curve, 95% together) of its AUC minus the random "
            f"map's lies below 0 for deletion and above 0 for insertion (random: {random['deletion_auc']:.3f} / {random['insertion_auc']:.3f}). ")
    if len(by_word[explain.UNTOLD]) == len(methods):
        said += (f"No method can be told from a random map on these {random['images']} images; more images "
                 f"(analyze.explain_samples) may tell them apart. ")
    elif not by_word[explain.FAITHFUL]:
        said += f"No method beats a random map on these {random['images']} images. "
    for word, found in by_word.items():
        if found:
            said += f"{word[0].upper() + word[1:]}: {', '.join(found)}. "
    said += (f"Failing the randomisation check (maps that barely change when the weights are re-initialised): "
             f"{', '.join(failed)}. " if failed else "Every method's maps change when the weights are re-initialised. ")
    return said + (f"The most faithful trusted method is {best}." if best else "No method is both faithful and model-dependent.")
