"""The report: one table row per model, training curves, confusion matrices, per-class scores, and what
the analyses found, rendered as each analysis declared it (the report names no analysis)."""

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
    "train": ("metrics", "history", "steps", "watch"),
    "evaluate": ("metrics", "per_class", "confusion"),
    "analyze": ("metrics", "tables", "figures"),
    "samples": ("data", "figure"),
}

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


def collect(models: list[str], root: Path = Path(".")) -> tuple[pd.DataFrame, dict, dict, dict]:
    """(summary table, history per model, watched curves per model, per-class table per model) from
    the stage outputs."""
    rows, histories, watched, per_class = [], {}, {}, {}
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
        watched[name] = pd.read_csv(trained_out.watch / "curves.csv")
        per_class[name] = pd.read_csv(tested_out.per_class)
    return pd.DataFrame(rows), histories, watched, per_class


def collect_analysis(models: list[str], root: Path = Path(".")) -> dict:
    """Per model: what the analyze stage found (its metrics, with the sections it declares for the
    report), the folders of its figures and tables, and the tables it declares plotted, read once."""
    analysis = {}
    for name in models:
        out = paths.outputs("analyze", name, root)
        metrics = _read_json(out.metrics)
        plotted = {table: pd.read_csv(out.tables / f"{table}.csv") for table in metrics.get("plots", {})}
        analysis[name] = {"metrics": metrics, "figures": out.figures, "tables": out.tables, "plotted": plotted}
    return analysis


# the history columns curves_figure draws: a retrain that changes only its timings redraws nothing
CURVES = ["epoch", "train_loss", "val_loss", "val_accuracy", "train_accuracy"]


def report_plots(analysis: dict) -> dict[str, dict]:
    """The tables analyses declare plotted in the report too (`"report": True`), with every model's curve."""
    plots = {}
    for name, analyzed in analysis.items():
        for table_name, plot in analyzed["metrics"].get("plots", {}).items():
            if plot.get("report"):
                frame = analyzed["plotted"][table_name]
                plots.setdefault(table_name, {"title": plot["title"], "x": plot["x"], "y": plot["y"], "curves": {}})
                plots[table_name]["curves"][name] = {"x": frame[plot["x"]].tolist(), "y": frame[plot["y"]].tolist()}
    return plots


def figure_data(histories: dict, analysis: dict) -> dict[str, dict]:
    """The data of the report's own figures, as JSON (cnnlab.plumbing.outputs.StagedOutputs.figure_of):
    the keyword arguments of curves_figure and, per report plot, of comparison_figure."""
    return {"curves": {"histories": {name: history[CURVES].to_dict("list") for name, history in histories.items()}},
            **{table_name: {"plot": plot} for table_name, plot in report_plots(analysis).items()}}


def _rows(frame: pd.DataFrame, model: str, columns: list[str]) -> list[dict]:
    return [{"model": model, **row} for row in frame[columns].to_dict("records")]


def comparison(summary: pd.DataFrame, histories: dict, watched: dict, analysis: dict, root: Path = Path(".")) -> dict:
    """What `dvc metrics`, `dvc exp show` and `dvc plots` show: every model of the summary, and only
    those, in a few files with a `model` column (one chart line, one confusion panel per model).

    scores: test accuracy of each model in one file, so `dvc exp show` puts them first; model_scores:
    the other few numbers people compare (those the analyses declare among them), one small file per
    model; figures: those the analyses declare compared across runs, and the samples.
    """
    epochs, steps, confusion, figures, watch_curves, watch = [], [], [], {}, [], {}
    tables: dict[str, list[dict]] = {}
    scores: dict = {"test": {}}
    model_scores: dict = {}
    for row in summary.itertuples():
        name, analyzed = row.model, analysis[row.model]
        epochs += _rows(histories[name], name, ["epoch", "train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"])
        steps += _rows(pd.read_csv(paths.outputs("train", name, root).steps), name, ["step", "loss", "accuracy"])
        watch_curves += _rows(watched[name], name, list(watched[name].columns))
        pictures = paths.outputs("train", name, root).watch
        watch.update({f"{name}_{kind.name}": kind for kind in sorted(pictures.iterdir()) if kind.is_dir()})
        for table_name, plot in analyzed["metrics"].get("plots", {}).items():
            series = plot.get("series")  # one line per model, or per model and series (e.g. method)
            tables.setdefault(table_name, []).extend(
                {"model": f"{name} {rec[series]}" if series else name, "x": rec[plot["x"]], "y": rec[plot["y"]],
                 plot["x"]: rec[plot["x"]], plot["y"]: rec[plot["y"]]}
                for rec in analyzed["plotted"][table_name].to_dict("records"))
        counts = pd.read_csv(paths.outputs("evaluate", name, root).confusion)
        counts["share"] = (counts["count"] / counts.groupby("actual")["count"].transform("sum").clip(lower=1)).round(4)
        confusion += _rows(counts, name, ["actual", "predicted", "count", "share"])
        scores["test"][name] = round(row.test_accuracy, 4)
        model_scores[name] = {"f1": round(row.test_macro_f1, 4), "val_acc": round(row.val_accuracy, 4),
                              "train_s": round(row.train_seconds, 1), **analyzed["metrics"].get("scores", {})}
        for figure, source in analyzed["metrics"].get("compared", {}).items():
            figures[f"{name}_{figure}"] = analyzed["figures"] / source
    figures["samples.png"] = paths.outputs("samples", root=root).figure
    return {"scores": scores, "model_scores": model_scores, "epochs": epochs, "steps": steps, "tables": tables,
            "confusion": confusion, "figures": figures, "watch_curves": watch_curves, "watch": watch}


def read_data_summary(root: Path = Path(".")) -> dict:
    return _read_json(paths.outputs("samples", root=root).data)


def _link(target: Path, root: Path) -> str:
    """`target` as the report links it: relative to the report's own folder."""
    return Path(os.path.relpath(target, paths.outputs("report", root=root).markdown.parent)).as_posix()


def analysis_markdown(analysis: dict, data: dict | None, root: Path = Path(".")) -> list[str]:
    """What the analyses found: every model's curves of each report plot side by side, then each model's
    sections as its analyses declared them (title, text, figures, tables)."""
    report = paths.outputs("report", root=root)
    lines = ["## Inside the networks", "",
             f"![sample training images]({_link(paths.outputs('samples', root=root).figure, root)})", ""]
    for table_name, plot in report_plots(analysis).items():
        lines += [f"![{plot['title']}]({_link(report.report_figures / f'{table_name}.png', root)})", "",
                  f"{plot['title'][0].upper()}{plot['title'][1:]}:", "", _markdown_table(side_by_side(plot)), ""]
    for name, analyzed in analysis.items():
        lines += [f"### {name}", ""]
        for section in analyzed["metrics"].get("sections", []):
            lines += section_lines(name, section, analyzed, root)
    if data:
        counts = pd.DataFrame(data["class_counts"])
        counts.insert(0, "class", data["classes"])
        lines += ["## Class counts used", "", _markdown_table(counts), ""]
        lines += data_card_lines(data.get("card") or {})
    return lines


def side_by_side(plot: dict) -> pd.DataFrame:
    """One row per x, one column of y per model."""
    columns = {name: pd.Series(curve["y"], index=curve["x"]) for name, curve in plot["curves"].items()}
    frame = pd.DataFrame(columns)
    frame.insert(0, plot["x"], frame.index)
    return frame


def section_lines(name: str, section: dict, analyzed: dict, root: Path, rows: int = 12) -> list[str]:
    folder = _link(analyzed["figures"], root)
    lines = [f"#### {section['title']}", ""]
    lines += [paragraph + "\n" for paragraph in section["text"]]
    lines += [f"![{name} {Path(f).stem}]({folder}/{f})\n" for f in section["figures"]]
    if section["links"]:
        lines += ["All of them: " + ", ".join(f"[{Path(f).stem}]({folder}/{f})" for f in section["links"]) + ".\n"]
    for table_name in section["tables"]:
        frame = pd.read_csv(analyzed["tables"] / f"{table_name}.csv")
        more = f" (first {rows} of {len(frame)} rows)" if len(frame) > rows else ""
        lines += ([f"Table {table_name}{more}:", ""] if more else []) + [_markdown_table(frame.head(rows)), ""]
    return lines


def learning_markdown(watched: dict, root: Path = Path(".")) -> list[str]:
    """Each model as it learned: its pictures before training, after the first epoch and after the last
    (train.watch), and how its two watched curves (`watched`, per model) moved."""
    lines = []
    for name, curves in watched.items():
        pictures = paths.outputs("train", name, root).watch
        if curves.empty:
            continue
        first, last = curves.iloc[0], curves.iloc[-1]
        moved = [f"{column.replace('_', ' ')} {first[column]:.3f} before training, {last[column]:.3f} after epoch "
                 f"{int(last['epoch'])}" for column in curves.columns if column != "epoch"]
        lines += [f"### {name}", "", "; ".join(moved).capitalize() + " (docs/watch.md says what they mean).", ""]
        shown = sorted({0, min(1, int(last["epoch"])), int(last["epoch"])})
        for kind in sorted(p for p in pictures.iterdir() if p.is_dir()):
            lines += [f"{kind.name.replace('_', ' ')}, at steps {', '.join(map(str, shown))}:", "",
                      " ".join(f"![{name} {kind.name} at step {step}]({_link(kind / f'{step}.png', root)})"
                               for step in shown), ""]
    return ["## As they learned", "", "Step 0 is the untrained network; step N, after epoch N. "
            "`dvc plots show` has every step, with a slider in VS Code's DVC extension.", "", *lines] if lines else []


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


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
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


def markdown(title: str, summary: pd.DataFrame, per_class: dict, watched: dict, analysis: dict | None = None,
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
    lines += learning_markdown(watched, root)
    lines += ["## Per-class recall (test set)", ""]
    recall = pd.DataFrame({name: table.set_index("class")["recall"].map(lambda v: f"{v:.2%}")
                           for name, table in per_class.items()})
    recall.insert(0, "class", recall.index)
    lines += [_markdown_table(recall), ""]
    if analysis:
        lines += analysis_markdown(analysis, data, root)
    return "\n".join(lines)
