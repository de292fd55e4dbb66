"""Grad-CAM and Guided Grad-CAM of the sample images, and how much of each map's heat lies on the object
(the brighter-than-average pixels: a digit's strokes)."""

from __future__ import annotations

import torch

from cnnlab import explain, figures

TITLE = "Grad-CAM"


def mass_on(cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The share of each map's total heat that falls inside `mask` (the digit's pixels, say)."""
    return (cam * mask).flatten(1).sum(1) / cam.flatten(1).sum(1).clamp_min(1e-12)


def run(s, findings, section) -> None:
    findings.metrics["gradcam_layer"] = None
    if s.spec.attribution_layer is None:
        section["text"].append("No spatial layer to explain (models/" + s.name + ".py declares none): no Grad-CAM.")
        return
    raw = s.sample_images
    path = s.spec.path(s.spec.attribution_layer)
    cam, guided, predicted, _ = explain.guided_grad_cam(s.model, path, s.test.normalise(raw))
    layer = f"{s.spec.attribution_layer} ({type(s.model.get_submodule(path)).__name__})"
    grey = raw.float().mean(1)
    on_object = (grey > grey.flatten(1).mean(1).view(-1, 1, 1)).float()
    object_mass, guided_mass = float(mass_on(cam, on_object).mean()), float(mass_on(guided, on_object).mean())
    findings.metrics.update(gradcam_layer=layer, gradcam_object_area=float(on_object.mean()),
                            gradcam_object_mass=object_mass, guided_gradcam_object_mass=guided_mass)
    captions = [f"true {s.row_labels[i]}, pred {s.classes[int(predicted[i])]}" for i in range(len(s.samples))]
    findings.figures["gradcam.png"] = figures.gradcam_figure(
        raw.cpu(), cam.cpu(), guided.cpu(), captions,
        f"{s.name}: Grad-CAM on {layer} (top) and Guided Grad-CAM (bottom), for the predicted class")
    findings.compared["gradcam.png"] = "gradcam.png"
    section["text"].append(
        f"On layer {layer}, {object_mass:.0%} of Grad-CAM's heat (Guided Grad-CAM: {guided_mass:.0%}) lies on "
        f"the object's pixels, which cover {float(on_object.mean()):.0%} of the image.")
    section["figures"].append("gradcam.png")
