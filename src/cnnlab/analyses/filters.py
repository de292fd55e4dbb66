"""The learned filters of every convolution."""

from __future__ import annotations

from torch import nn

from cnnlab import figures

TITLE = "Learned filters"


def run(s, findings, section) -> None:
    convs = [(name, module) for name, module in s.model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        section["text"].append("No convolutions: no filters to draw.")
        return
    for i, (layer, conv) in enumerate(convs):
        path = f"filters/{layer}.png"
        findings.figures[path] = figures.filters_figure(f"{s.name} conv {layer}", conv.weight, i == 0,
                                                        s.options["max_channels"])
        section["figures"].append(path)
    findings.compared["filters.png"] = section["figures"][-1]  # the last conv's, compared across runs
    section["text"].append(f"{len(convs)} convolution{'s' if len(convs) > 1 else ''}; the first layer's filters "
                           f"are drawn in colour when the input has three channels.")
