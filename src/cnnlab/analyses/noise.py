"""Test accuracy under salt-and-pepper noise (the same noise for every model: drawn on the CPU from the
seed, whatever the device)."""

from __future__ import annotations

import torch

from cnnlab.augment import salt_and_pepper
from cnnlab.engine.inference import predict_split

TITLE = "Robustness to noise"
PLOTS = {"noise": {"x": "noise", "y": "accuracy", "title": "test accuracy under salt-and-pepper noise",
                   "report": True}}


def accuracy_under_noise(model, test, levels: list[float], batch_size: int, seed: int, dtype=None,
                         tta: str = "none") -> dict[str, float]:
    result = {}
    for level in levels:
        noisy = salt_and_pepper(test.images.cpu(), level, torch.Generator().manual_seed(seed))
        result[f"{level:g}"] = predict_split(model, test.with_images(noisy), batch_size, dtype, keep=False, tta=tta).accuracy
    return result


def run(s, findings, section) -> None:
    noise = accuracy_under_noise(s.model, s.test, s.options["noise_levels"], s.options["batch_size"],
                                 s.options["seed"], s.dtype, s.tta)
    findings.metrics["noise_accuracy"] = noise
    findings.tables["noise"] = [{"noise": float(k), "accuracy": v} for k, v in noise.items()]
    levels = sorted(noise.items(), key=lambda item: float(item[0]))
    findings.scores["noisy"] = round(levels[-1][1], 4)  # accuracy at the strongest noise
    middle = ", ".join(f"{v:.2%} at {k}" for k, v in levels[1:-1])
    section["text"].append(f"Salt-and-pepper noise takes its accuracy from {levels[0][1]:.2%} at {levels[0][0]} to "
                           f"{levels[-1][1]:.2%} at {levels[-1][0]}" + (f" ({middle})." if middle else "."))
