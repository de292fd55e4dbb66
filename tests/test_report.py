import pandas as pd

from cnnlab.report import compare_models, describe_model


def found(likeness, silhouette, pixels, noise):
    layers = pd.DataFrame({"layer": [str(i) for i in range(len(likeness))],
                           "type": ["Conv2d", "ReLU", "Conv2d", "Linear"][:len(likeness)],
                           "shape": ["6x28x28", "6x28x28", "16x10x10", "10"][:len(likeness)],
                           "image_likeness": likeness})
    return {"metrics": {"silhouette": silhouette, "silhouette_pixels": pixels, "feature_dim": 84, "tsne_samples": 2000},
            "layers": layers, "noise": pd.DataFrame({"noise": [0, 0.1, 0.2], "accuracy": noise})}


def test_the_paragraph_is_written_from_the_numbers():
    text = describe_model("lenet", found([0.8, 0.6, 0.2, None], 0.5, 0.05, [0.99, 0.97, 0.9]))
    assert "up to layer 1 (ReLU, 6x28x28, 0.60)" in text
    assert "by layer 2 (Conv2d, 16x10x10) the correlation is 0.20" in text
    assert "silhouette of 0.500, against 0.050 for the raw pixels" in text and "(10.0x)" in text
    assert "from 99.00% at 0 to 90.00% at 0.2 (97.00% at 0.1)" in text


def test_a_network_without_maps_is_said_plainly():
    text = describe_model("mlp", found([None, None], 0.3, 0.05, [0.98, 0.9, 0.7]))
    assert "no filters and no Grad-CAM" in text


def test_the_comparison_names_the_most_robust_model():
    analysis = {"mlp": found([None], 0.3, 0.05, [0.98, 0.9, 0.7]), "cnn": found([0.7], 0.6, 0.05, [0.99, 0.97, 0.93])}
    text = compare_models(analysis)
    assert text.startswith("At noise 0.2, cnn keeps the most accuracy (93.00%) and mlp the least (70.00%)")
    assert "cnn's (silhouette 0.600)" in text


def test_maps_that_stay_image_like_to_the_end_are_not_said_to_fade():
    text = describe_model("cnn", found([0.8, 0.7, 0.6, None], 0.3, 0.05, [0.99, 0.97, 0.9]))
    assert "through its last spatial layer, 2 (Conv2d, 16x10x10, 0.60)" in text and "rather than" not in text


def test_the_curves_figure_data_holds_only_what_it_draws():
    """A retrain whose curves are the same but whose timings differ keeps report/curves.png."""
    from cnnlab.report import CURVES, figure_data
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.5, 0.3], "train_accuracy": [0.9, 0.95],
                            "val_loss": [0.4, 0.35], "val_accuracy": [0.91, 0.93], "lr": [0.1, 0.05],
                            "seconds": [3.2, 3.1]})
    slower = history.assign(seconds=[4.0, 4.4])
    analysis = {"cnn": {"noise": None}}
    assert figure_data({"cnn": history}, analysis) == figure_data({"cnn": slower}, analysis)
    assert list(figure_data({"cnn": history}, analysis)["curves"]["histories"]["cnn"]) == CURVES
