"""One way to run a model over a split: in batches, under inference_mode, with the autocast it was
trained with. Validation, evaluation and every analysis go through `run`, so on any device the
validation and test numbers come from the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine.batches import DeviceSplit


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision`, or None for plain fp32.

    auto: on CUDA, bf16 where supported, else fp16 (with a grad scaler); on a CPU, bf16 only where
    it has bf16 instructions (AVX512-BF16 or AMX): elsewhere autocast emulates bf16 and makes
    training slower (docs/performance.md has the measurements).
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (the flags Linux reports; False elsewhere)."""
    try:
        with open(cpuinfo) as file:
            flags = next((line for line in file if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def uses_channels_last(model: nn.Module, memory_format: str = "auto") -> bool:
    """channels_last (NHWC) lets oneDNN on CPU and cuDNN on GPU pick their fastest convolution
    kernels (benchmarks/ measures the gain). A network without convolutions gains nothing, so `auto`
    keeps it contiguous."""
    if memory_format != "auto":
        return memory_format == "channels_last"
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def memory_format_for(model: nn.Module, memory_format: str = "auto") -> torch.memory_format:
    return torch.channels_last if uses_channels_last(model, memory_format) else torch.contiguous_format


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The logits of images x averaged over test-time views (`train.tta`): `flip` adds each mirror
    image; `flip_translate` (airbench94's) also both shifted one pixel up-left and down-right."""
    if tta == "none":
        return model(x)
    logits = (model(x) + model(x.flip(-1))) / 2
    if tta == "flip":
        return logits
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (padded[..., :height, :width], padded[..., 2:, 2:])
    return logits / 2 + sum(tta_logits(model, s, "flip") for s in shifted) / 4


def run(model: nn.Module, data: DeviceSplit, batch_size: int, dtype: torch.dtype | None = None,
        index: torch.Tensor | None = None, tta: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 logits, labels) of each batch, in order (of `index` when given), over the `tta` views."""
    model.eval()
    device = data.labels.device
    with torch.inference_mode():
        for x, y in data.batches(batch_size, index=index):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = tta_logits(model, x, tta)
            yield logits.float(), y


@dataclass
class SplitPredictions:
    loss: float               # mean cross-entropy
    accuracy: float
    predicted: torch.Tensor   # class per image, on the CPU
    probabilities: torch.Tensor  # softmax per image, on the CPU


def predict_split(model: nn.Module, data: DeviceSplit, batch_size: int, dtype: torch.dtype | None = None,
          keep: bool = True, tta: str = "none") -> SplitPredictions:
    """Cross-entropy and accuracy over a split (the test set, an analysis's images); with `keep`, also
    every prediction and its probabilities. `tta`: as `run`. Training validates with its own loss
    (cnnlab.train.loop.evaluate)."""
    loss_sum = torch.zeros((), device=data.labels.device)
    correct = torch.zeros((), device=data.labels.device, dtype=torch.long)
    predicted, probabilities = [], []
    for logits, y in run(model, data, batch_size, dtype, tta=tta):
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        if keep:
            predicted.append(logits.argmax(1))
            probabilities.append(F.softmax(logits, 1))
    empty = torch.empty(0)
    return SplitPredictions(loss_sum.item() / len(data), correct.item() / len(data),
                  torch.cat(predicted).cpu() if keep else empty, torch.cat(probabilities).cpu() if keep else empty)


def embeddings(model: nn.Module, head: nn.Module, data: DeviceSplit, index: torch.Tensor, batch_size: int,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The input of the classifier's head (the model's declared last layer: the embedding the
    classes are read from), flattened, for the images at `index`."""
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda mod, inputs: captured.append(inputs[0].flatten(1).float()))
    try:
        for _ in run(model, data, batch_size, dtype, index):
            pass
    finally:
        handle.remove()
    return torch.cat(captured).cpu()
