"""The report: one table row per model, training curves, confusion matrices, per-class scores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from cnnlab import CnnlabError
from cnnlab.config import paths

# What the report reads, by stage and output role (paths.OUTPUTS): dvc.yaml's deps of the report stage
# are the folders holding these (tests/test_dvc_yaml.py checks it).
READS = {
    "train": ("metrics", "history", "steps"),
    "evaluate": ("metrics", "per_class", "confusion"),
    "analyze": ("metrics", "tables", "figures"),
    "samples": ("data", "figure"),
}

# The analyses' own tables the report writes about; any other table (a new analysis's) is shown as
# it is, and every figure at the top of a model's analysis folder is compared across runs.
DESCRIBED_TABLES = ("layers", "noise", "tsne", "mistakes", "deletion", "insertion", "randomization")

SUMMARY_COLUMNS = {
    "model": "model", "parameters": "parameters", "epochs_run": "epochs", "best_val_loss": "best val loss",
    "val_accuracy": "val acc", "test_accuracy": "test acc", "test_macro_f1": "test macro F1",
    "train_seconds": "train s", "images_per_second": "train images/s",
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CnnlabError(f"{path}: missing; run the train and evaluate stages first (dvc repro)") from None


def collect(models: list[str], root: Path = Path(".")) -> tuple[pd.DataFrame, dict, dict]:
    """(summary table, history per model, per-class table per model) from the stage outputs."""
    rows, histories, per_class = [], {}, {}
    for name in models:
        trained_out, tested_out = paths.outputs("train", name, root), paths.outputs("evaluate", name, root)
        trained, tested = _read_json(trained_out.metrics), _read_json(tested_out.metrics)
        rows.append({
            "model": name, "parameters": trained["parameters"], "epochs_run": trained["epochs_run"],
            "best_val_loss": trained["best_val_loss"], "val_accuracy": trained["val_accuracy"],
            "test_accuracy": tested["accuracy"], "test_macro_f1": tested["macro_f1"],
            "train_seconds": trained["train_seconds"], "images_per_second": trained["images_per_second"],
            "dataset": trained.get("dataset", ""), "device": trained["env"]["device_name"],
            "threads": trained["env"]["threads"], "torch": trained["env"]["torch"], "seed": trained["env"]["seed"],
        })
        histories[name] = pd.read_csv(trained_out.history)
        per_class[name] = pd.read_csv(tested_out.per_class)
    return pd.DataFrame(rows), histories, per_class


def collect_analysis(models: list[str], root: Path = Path(".")) -> dict:
    """Per model: the analyze stage's metrics, every table it wrote (by name), its figures' folder."""
    found = {}
    for name in models:
        out = paths.outputs("analyze", name, root)
        tables = {path.stem: pd.read_csv(path) for path in sorted(out.tables.glob("*.csv"))}
        found[name] = {"metrics": _read_json(out.metrics), "tables": tables, "layers": tables.get("layers"),
                       "noise": tables.get("noise"), "figures": out.figures}
    return found


# the history columns curves_figure draws: a retrain that changes only its timings redraws nothing
CURVES = ["epoch", "train_loss", "val_loss", "val_accuracy", "train_accuracy"]


def figure_data(histories: dict, analysis: dict) -> dict[str, dict]:
    """The data of the report's own figures, as JSON (cnnlab.plumbing.outputs.StagedOutputs.figure_of):
    the keyword arguments of curves_figure and noise_figure."""
    return {
        "curves": {"histories": {name: history[CURVES].to_dict("list") for name, history in histories.items()}},
        "noise": {"analysis": {name: {"noise": None if found["noise"] is None else found["noise"].to_dict("list")}
                               for name, found in analysis.items()}},
    }


def _rows(frame: pd.DataFrame, model: str, columns: list[str]) -> list[dict]:
    return [{"model": model, **row} for row in frame[columns].to_dict("records")]


def comparison(summary: pd.DataFrame, histories: dict, analysis: dict, root: Path = Path(".")) -> dict:
    """What `dvc metrics`, `dvc exp show` and `dvc plots` show: every model of the summary, and only
    those, in a few files with a `model` column (one chart line, one confusion panel per model).
    Built from what `collect` and `collect_analysis` already read; only the per-batch history and
    the confusion counts are read here.

    scores: test accuracy of each model in one file, so `dvc exp show` puts them first; model_scores:
    the other few numbers people compare, one small file per model (`dvc metrics show` stays narrow).
    """
    epochs, steps, confusion, figures = [], [], [], {}
    tables: dict[str, list[dict]] = {}
    scores: dict = {"test": {}}
    model_scores: dict = {}
    for row in summary.itertuples():
        name, found = row.model, analysis[row.model]
        epochs += _rows(histories[name], name, ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"])
        steps += _rows(pd.read_csv(paths.outputs("train", name, root).steps), name, ["step", "loss", "accuracy"])
        for table, plot in found["metrics"].get("plots", {}).items():  # what analyses declared plottable
            frame = found["tables"][table]
            series = plot.get("series")  # one line per model, or per model and series (e.g. method)
            tables.setdefault(table, []).extend(
                {"model": f"{name} {row[series]}" if series else name, "x": row[plot["x"]], "y": row[plot["y"]],
                 plot["x"]: row[plot["x"]], plot["y"]: row[plot["y"]]} for row in frame.to_dict("records"))
        counts = pd.read_csv(paths.outputs("evaluate", name, root).confusion)
        counts["share"] = (counts["count"] / counts.groupby("actual")["count"].transform("sum").clip(lower=1)).round(4)
        confusion += _rows(counts, name, ["actual", "predicted", "count", "share"])
        scores["test"][name] = round(row.test_accuracy, 4)
        model_scores[name] = {
            "f1": round(row.test_macro_f1, 4),
            "val_acc": round(row.val_accuracy, 4),
            "silhouette": round(found["metrics"]["silhouette"], 3),
            "train_s": round(row.train_seconds, 1),
        }
        curve = found["noise"]
        if curve is not None:
            model_scores[name]["noisy"] = round(float(curve["accuracy"].iloc[curve["noise"].idxmax()]), 4)
        best = found["metrics"].get("explanation_best")
        if best:  # the most faithful trusted attribution method, and how faithful
            scored = found["metrics"]["explanations"][best]
            model_scores[name].update(explainer=best, deletion_auc=round(scored["deletion_auc"], 3),
                                      insertion_auc=round(scored["insertion_auc"], 3))
        for source in sorted(found["figures"].glob("*.png")):  # every analysis's own figures
            figures[f"{name}_{source.name}"] = source
        last_conv = found["metrics"].get("last_conv")
        if last_conv and (found["figures"] / f"filters/{last_conv}.png").is_file():
            figures[f"{name}_filters.png"] = found["figures"] / f"filters/{last_conv}.png"
    figures["samples.png"] = paths.outputs("samples", root=root).figure
    return {"scores": scores, "model_scores": model_scores, "epochs": epochs, "steps": steps, "tables": tables,
            "confusion": confusion, "figures": figures}


def read_data_summary(root: Path = Path(".")) -> dict:
    return _read_json(paths.outputs("samples", root=root).data)


def describe_model(name: str, found: dict) -> str:
    """A short paragraph written from the analysis numbers."""
    m, layers, noise = found["metrics"], found["layers"], found["noise"]
    spatial = layers.dropna(subset=["image_likeness"]) if layers is not None else pd.DataFrame()
    sentences = []
    if len(spatial):
        like = spatial[spatial["image_likeness"] >= 0.5]
        last = spatial.iloc[-1]
        if len(like) and like.index[-1] == spatial.index[-1]:
            sentences.append(
                f"Its feature maps stay image-like (mean correlation with the input >= 0.5) through its last "
                f"spatial layer, {last['layer']} ({last['type']}, {last['shape']}, {last['image_likeness']:.2f}): "
                f"the classifier reads maps that still outline the input.")
        elif len(like):
            keep = like.iloc[-1]
            sentences.append(
                f"Its feature maps stay image-like (mean correlation with the input >= 0.5) up to layer "
                f"{keep['layer']} ({keep['type']}, {keep['shape']}, {keep['image_likeness']:.2f}); by layer "
                f"{last['layer']} ({last['type']}, {last['shape']}) the correlation is "
                f"{last['image_likeness']:.2f}, the maps now code for parts rather than the picture.")
        else:
            sentences.append(f"Already its first layer's maps correlate weakly with the input "
                             f"({spatial.iloc[0]['image_likeness']:.2f}).")
    else:
        sentences.append("It has no convolutions: every layer is a vector, so there are no spatial maps, "
                         "no filters and no Grad-CAM; its layer activations are drawn as heatmaps instead.")
    ratio = m["silhouette"] / m["silhouette_pixels"] if m["silhouette_pixels"] > 0 else float("nan")
    sentences.append(
        f"Its {m['feature_dim']}-d penultimate features separate the classes with a silhouette of "
        f"{m['silhouette']:.3f}, against {m['silhouette_pixels']:.3f} for the raw pixels of the same "
        f"{m['tsne_samples']} test images" + (f" ({ratio:.1f}x)." if ratio == ratio else "."))
    if noise is None:
        return " ".join(sentences)
    clean, worst = noise.iloc[0], noise.iloc[-1]
    sentences.append(
        f"Salt-and-pepper noise takes its accuracy from {clean['accuracy']:.2%} at {clean['noise']:g} to "
        f"{worst['accuracy']:.2%} at {worst['noise']:g} (" + ", ".join(
            f"{row.accuracy:.2%} at {row.noise:g}" for row in noise.iloc[1:-1].itertuples()) + ").")
    return " ".join(s.replace(" ().", ".") for s in sentences).replace(" ()", "")


def compare_models(analysis: dict) -> str:
    if len(analysis) < 2 or any(found["noise"] is None for found in analysis.values()):
        return ""
    worst = {name: found["noise"].iloc[-1] for name, found in analysis.items()}
    level = next(iter(worst.values()))["noise"]
    robust = max(worst, key=lambda n: worst[n]["accuracy"])
    fragile = min(worst, key=lambda n: worst[n]["accuracy"])
    separated = max(analysis, key=lambda n: analysis[n]["metrics"]["silhouette"])
    return (f"At noise {level:g}, {robust} keeps the most accuracy ({worst[robust]['accuracy']:.2%}) and "
            f"{fragile} the least ({worst[fragile]['accuracy']:.2%}). The most separated embedding is "
            f"{separated}'s (silhouette {analysis[separated]['metrics']['silhouette']:.3f}).")


def _link(target: Path, root: Path) -> str:
    """`target` as the report links it: relative to the report's own folder."""
    return Path(os.path.relpath(target, paths.outputs("report", root=root).markdown.parent)).as_posix()


def analysis_markdown(analysis: dict, data: dict | None, root: Path = Path(".")) -> list[str]:
    report = paths.outputs("report", root=root)
    lines = ["## Inside the networks", "",
             f"![sample training images]({_link(paths.outputs('samples', root=root).figure, root)})", "",
             f"![accuracy under noise]({_link(report.noise, root)})", ""]
    comparison = compare_models(analysis)
    if comparison:
        lines += [comparison, ""]
    if all(found["noise"] is not None for found in analysis.values()):
        noise_table = pd.DataFrame({name: found["noise"].set_index("noise")["accuracy"].map(lambda v: f"{v:.2%}")
                                    for name, found in analysis.items()})
        noise_table.insert(0, "noise", [f"{v:g}" for v in noise_table.index])
        lines += ["Test accuracy under salt-and-pepper noise:", "", _markdown_table(noise_table), ""]
    for name, found in analysis.items():
        folder_path = found["figures"]
        folder = _link(folder_path, root)
        lines += [f"### {name}", "", describe_model(name, found), ""]
        if found["layers"] is not None:
            layer_rows = found["layers"].copy()
            layer_rows["image_likeness"] = layer_rows["image_likeness"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
            lines += [_markdown_table(layer_rows.rename(columns={"image_likeness": "correlation with input"})), ""]
        figures = sorted(p.name for p in (folder_path / "maps").glob("*.png"))
        lines += ["Feature maps, one row per class: " + ", ".join(
            f"[{f.removesuffix('.png')}]({folder}/maps/{f})" for f in figures) + ".", ""]
        if figures:
            first_spatial = next((f for f in figures if "Conv" in f), figures[0])
            lines += [f"![{name} {first_spatial}]({folder}/maps/{first_spatial})", ""]
        if found["metrics"].get("gradcam_layer"):
            filters = sorted(p.name for p in (folder_path / "filters").glob("*.png"))
            lines += [f"![{name} filters {f}]({folder}/filters/{f})" for f in filters] + [""]
            lines += [f"![{name} Grad-CAM]({folder}/gradcam.png)", ""]
        else:
            lines += ["No convolution layers: no filters and no Grad-CAM for this model.", ""]
        lines += [f"![{name} t-SNE]({folder}/tsne.png)", ""]
        if (folder_path / "confused.png").exists():
            lines += [f"![{name} most confident mistakes]({folder}/confused.png)", ""]
        lines += explanation_lines(name, found, folder)
        lines += other_findings(name, found, folder)
    if data:
        counts = pd.DataFrame(data["class_counts"])
        counts.insert(0, "class", data["classes"])
        lines += ["## Class counts used", "", _markdown_table(counts), ""]
        lines += data_card_lines(data.get("card") or {})
    return lines


def _counts(mapping: dict) -> str:
    return ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in mapping.items() if n) or "none"


def data_card_lines(card: dict) -> list[str]:
    """What download and prepare found and did, so a user can see the data was read as meant."""
    if not card:
        return []
    lines = ["## Data card", "", "What `download` and `prepare` found and did (`metrics/data.json`, `card`).", ""]
    if card.get("source"):
        lines.append(f"- source: `{card['source']}`" + (f", split folders: {', '.join(f'{k}/ as {v}' for k, v in card['split_folders'].items())}"
                                                         if card.get("split_folders") else ""))
    if "skipped" in card:
        lines.append(f"- files skipped: {_counts(card['skipped'])}")
    if card.get("ignored_folders"):
        lines.append(f"- folders ignored (hidden or system): {', '.join(card['ignored_folders'][:10])}")
    if "rotated" in card or "converted" in card:
        lines.append(f"- images turned upright by their EXIF orientation: {card.get('rotated', 0):,}; converted: "
                     f"{_counts(card.get('converted', {}))}")
    if "resized" in card:
        lines.append(f"- images resized to {card['image_size']}x{card['image_size']}: {card['resized']:,}")
    dropped = card.get("duplicates_dropped", {})
    if dropped:
        per_class = {k: v for k, v in dropped.get("per_class", {}).items() if v}
        identical = (f"identical after resizing to {card['image_size']}x{card['image_size']}" if card.get("resized")
                     else "identical pixel for pixel")
        lines.append(f"- images {identical} dropped from training: "
                     f"{_counts({k: v for k, v in dropped.items() if k != 'per_class'})}"
                     + (f" (by class: {_counts(per_class)})" if per_class else ""))
    if card.get("repeated_in_test"):
        lines.append(f"- test images identical to another test image (kept, so scored twice): "
                     f"{card['repeated_in_test']:,}")
    return lines + [""]


SHOWN_FIGURES = ("gradcam.png", "tsne.png", "confused.png", "explanations.png")


def verdict(method: str, scored: dict) -> str:
    """What an attribution method's numbers say about it (cnnlab.explain.assess's booleans)."""
    if method == "random":
        return "baseline (ignores the model)"
    return (("faithful" if scored["beats_random"] else "no better than random")
            + ("" if scored["passes_randomization"] else ", fails the randomisation check"))


def explanation_lines(name: str, found: dict, folder: str) -> list[str]:
    """Which attribution methods explain this model, from the numbers: deletion and insertion AUC
    against a random map, and the model-randomisation check."""
    scored = found["metrics"].get("explanations")
    if not scored:
        return []
    random = scored.get("random", {})
    rows = pd.DataFrame([{"method": method, "deletion AUC (lower: better)": f"{n['deletion_auc']:.3f}",
                          "insertion AUC (higher: better)": f"{n['insertion_auc']:.3f}",
                          "rank correlation after randomising the weights": f"{n['randomized_spearman']:.2f}",
                          "verdict": verdict(method, n)}
                         for method, n in scored.items()])
    methods = [m for m in scored if m != "random"]
    beat = [m for m in methods if scored[m]["beats_random"]]
    failed = [m for m in methods if not scored[m]["passes_randomization"]]
    best = found["metrics"].get("explanation_best")
    said = (f"Of {len(methods)} attribution methods, {len(beat)} beat a random map on both deletion and insertion "
            f"(random: {random.get('deletion_auc', float('nan')):.3f} / {random.get('insertion_auc', float('nan')):.3f})"
            + (f": {', '.join(beat)}" if beat else "") + ". ")
    if set(methods) - set(beat):
        said += f"No better than random: {', '.join(m for m in methods if m not in beat)}. "
    said += (f"Failing the randomisation check (maps that barely change when the weights are re-initialised): "
             f"{', '.join(failed)}. " if failed else "Every method's maps change when the weights are re-initialised. ")
    said += f"The most faithful trusted method is {best}." if best else "No method is both faithful and model-dependent."
    return ["#### Explanations you can trust", "", said, "", _markdown_table(rows), "",
            f"![{name} explanations]({folder}/explanations.png)", ""]


def other_findings(name: str, found: dict, folder: str, rows: int = 12) -> list[str]:
    """What analyses the report does not describe in words wrote: their figures, their tables (the
    first rows) and their numbers, shown as they are."""
    lines = []
    for figure in sorted(found["figures"].glob("*.png")):
        if figure.name not in SHOWN_FIGURES:
            lines += [f"![{name} {figure.stem}]({folder}/{figure.name})", ""]
    for table, frame in found["tables"].items():
        if table not in DESCRIBED_TABLES:
            more = f" (first {rows} of {len(frame)} rows)" if len(frame) > rows else ""
            lines += [f"Table {table}{more}:", "", _markdown_table(frame.head(rows).round(4)), ""]
    return lines


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _display(summary: pd.DataFrame) -> pd.DataFrame:
    shown = summary[list(SUMMARY_COLUMNS)].copy()
    for column in ("val_accuracy", "test_accuracy", "test_macro_f1"):
        shown[column] = shown[column].map(lambda v: f"{v:.2%}")
    shown["best_val_loss"] = shown["best_val_loss"].map(lambda v: f"{v:.4f}")
    shown["train_seconds"] = shown["train_seconds"].map(lambda v: f"{v:.1f}")
    shown["images_per_second"] = shown["images_per_second"].map(lambda v: f"{v:,.0f}")
    shown["parameters"] = shown["parameters"].map(lambda v: f"{v:,}")
    return shown.rename(columns=SUMMARY_COLUMNS)


def markdown(title: str, summary: pd.DataFrame, per_class: dict, analysis: dict | None = None,
             data: dict | None = None, root: Path = Path(".")) -> str:
    first = summary.iloc[0]
    lines = [
        f"# {title}", "",
        f"Dataset **{first['dataset']}**, trained on {first['device']} ({first['threads']} threads), "
        f"torch {first['torch']}, seed {first['seed']}. Generated by `dvc repro`; do not edit.", "",
        _markdown_table(_display(summary)), "",
        "Val acc is the validation accuracy at the best epoch (lowest validation loss), whose weights are "
        "kept. Train images/s counts training passes only; train s is the whole fit, validation included.",
        "", "## Training curves", "", f"![training curves]({_link(paths.outputs('report', root=root).curves, root)})", "",
        "## Confusion matrices (test set)", "",
    ]
    for name in summary["model"]:
        lines += [f"### {name}", "", f"![{name} confusion matrix]({_link(paths.outputs('evaluate', name, root).confusion_figure, root)})", ""]
    lines += ["## Per-class recall (test set)", ""]
    recall = pd.DataFrame({name: table.set_index("class")["recall"].map(lambda v: f"{v:.2%}")
                           for name, table in per_class.items()})
    recall.insert(0, "class", recall.index)
    lines += [_markdown_table(recall), ""]
    if analysis:
        lines += analysis_markdown(analysis, data, root)
    return "\n".join(lines)
