import ast
import json
from pathlib import Path

import pandas as pd

from cnnlab import analyses, report
from cnnlab.analyses.feature_maps import describe
from conftest import REPO


def layers(likeness):
    kinds, shapes = ["Conv2d", "ReLU", "Conv2d", "Linear"], ["6x28x28", "6x28x28", "16x10x10", "10"]
    return [{"layer": str(i), "type": kinds[i], "shape": shapes[i], "image_likeness": v} for i, v in enumerate(likeness)]


def test_the_feature_maps_paragraph_is_written_from_the_numbers():
    text = describe(layers([0.8, 0.6, 0.2, None]))
    assert "up to layer 1 (ReLU, 6x28x28, 0.60)" in text
    assert "by layer 2 (Conv2d, 16x10x10) the correlation is 0.20" in text


def test_a_network_without_maps_is_said_plainly():
    assert "no spatial maps" in describe(layers([None, None]))


def test_maps_that_stay_image_like_to_the_end_are_not_said_to_fade():
    text = describe(layers([0.8, 0.7, 0.6, None]))
    assert "through its last spatial layer, 2 (Conv2d, 16x10x10, 0.60)" in text and "rather than" not in text


def write_analysis(root: Path, name: str, accuracy: list[float]) -> None:
    """What the analyze stage writes for one model: its metrics with two declared sections, a table, a figure."""
    out = report.paths.outputs("analyze", name, root)
    out.tables.mkdir(parents=True)
    (out.figures / "maps").mkdir(parents=True)
    (out.figures / "maps" / "01_0_Conv2d.png").write_bytes(b"")
    pd.DataFrame({"level": [0, 0.5], "accuracy": accuracy}).to_csv(out.tables / "robustness.csv", index=False)
    sections = [{"title": "A first look", "text": [f"{name} says hello."], "figures": ["maps/01_0_Conv2d.png"],
                 "links": [], "tables": []},
                {"title": "Shaken", "text": ["Noise hurts."], "figures": [], "links": [], "tables": ["robustness"]}]
    plots = {"robustness": {"x": "level", "y": "accuracy", "title": "accuracy when shaken", "report": True}}
    out.metrics.parent.mkdir(parents=True, exist_ok=True)
    out.metrics.write_text(json.dumps({"sections": sections, "plots": plots, "scores": {"shaken": accuracy[-1]},
                                       "compared": {"first.png": "maps/01_0_Conv2d.png"}}))


def test_the_report_renders_what_each_analysis_declares(tmp_path):
    for name, accuracy in (("mlp", [0.98, 0.5]), ("lenet", [0.99, 0.9])):
        write_analysis(tmp_path, name, accuracy)
    analysis = report.collect_analysis(["mlp", "lenet"], tmp_path)
    text = "\n".join(report.analysis_markdown(analysis, None, tmp_path))
    assert text.index("### mlp") < text.index("#### A first look") < text.index("mlp says hello.") < text.index("### lenet")
    assert "![mlp 01_0_Conv2d](../plots/analysis/mlp/maps/01_0_Conv2d.png)" in text
    assert "| level | accuracy |" in text and "| 0.5 | 0.9 |" in text  # lenet's table, rendered as declared
    assert "![accuracy when shaken](figures/robustness.png)" in text
    assert "| level | mlp | lenet |" in text and "| 0.5 | 0.5 | 0.9 |" in text  # the models side by side
    assert report.figure_data({}, analysis)["robustness"]["plot"]["curves"]["lenet"] == {"x": [0, 0.5], "y": [0.99, 0.9]}


def test_the_report_names_no_analysis():
    """Adding an analysis is one file: report.py mentions none of their names, tables or numbers."""
    words = {module.__name__.rsplit(".", 1)[1] for module in analyses.modules()}
    words |= {"layers", "tsne", "silhouette", "gradcam", "explanation", "verdict", "noise", "mistakes"}
    strings = [node.value.lower() for node in ast.walk(ast.parse((REPO / "src/cnnlab/report.py").read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    names = [node.id.lower() for node in ast.walk(ast.parse((REPO / "src/cnnlab/report.py").read_text()))
             if isinstance(node, ast.Name)]
    assert not [w for w in words if any(w in s for s in strings) or w in names]


def test_the_curves_figure_data_holds_only_what_it_draws():
    """A retrain whose curves are the same but whose timings differ keeps report/curves.png."""
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.5, 0.3], "train_accuracy": [0.9, 0.95],
                            "val_loss": [0.4, 0.35], "val_accuracy": [0.91, 0.93], "lr": [0.1, 0.05],
                            "seconds": [3.2, 3.1]})
    slower = history.assign(seconds=[4.0, 4.4])
    assert report.figure_data({"cnn": history}, {}) == report.figure_data({"cnn": slower}, {})
    assert list(report.figure_data({"cnn": history}, {})["curves"]["histories"]["cnn"]) == report.CURVES
