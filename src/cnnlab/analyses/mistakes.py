"""The misclassified test images the model was most sure about."""

from __future__ import annotations

import torch

from cnnlab import figures
from cnnlab.engine.inference import predict_split

TITLE = "Most confident mistakes"


def most_confused(probs: torch.Tensor, labels: torch.Tensor, count: int) -> list[dict]:
    confidence, predicted = probs.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [{"index": int(i), "actual": int(labels[i]), "predicted": int(predicted[i]),
             "confidence": float(confidence[i])} for i in order]


def run(s, findings, section) -> None:
    probs = predict_split(s.model, s.test, s.options["batch_size"], s.dtype, tta=s.tta).probabilities
    mistakes = most_confused(probs, s.labels, s.options["top_confused"])
    if not mistakes:
        section["text"].append("No test image is misclassified.")
        return
    images = s.test.images.index_select(0, torch.tensor([m["index"] for m in mistakes],
                                                        device=s.test.images.device)).cpu()
    captions = [f"{s.classes[m['actual']]} as {s.classes[m['predicted']]} ({m['confidence']:.0%})" for m in mistakes]
    findings.figures["confused.png"] = figures.image_grid(
        images, captions, min(len(mistakes), 8), f"{s.name}: most confident mistakes (true as predicted)")
    findings.tables["mistakes"] = [{**m, "actual": s.classes[m["actual"]], "predicted": s.classes[m["predicted"]]}
                                   for m in mistakes]
    findings.compared["confused.png"] = "confused.png"
    section["text"].append(f"The {len(mistakes)} wrong predictions it was most sure of, true class as predicted.")
    section["figures"].append("confused.png")
