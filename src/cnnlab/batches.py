"""The data path: a split lives on the training device as uint8, batches are cut by index and
normalised as whole tensors. No per-sample Python and no loader workers, so the cost of a batch is a
gather and one fused multiply-subtract, far below the model's own forward and backward pass.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch


class DeviceSplit:
    """One split (images uint8 [N, C, H, W], labels int64 [N]) held on `device`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
        if images.dtype != torch.uint8:
            raise TypeError("images must be uint8")
        self.images = images.to(device)
        self.labels = labels.to(device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std folded into x * scale - shift
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t
        self.memory_format = memory_format

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images_uint8: torch.Tensor,
                  augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        images = images_uint8.float()
        if augment is not None:  # works in pixel units, so padding and noise are plain 0/255
            images = augment(images)
        images = images.mul_(self.scale).sub_(self.shift)
        return images.contiguous(memory_format=self.memory_format)

    def with_images(self, images: torch.Tensor) -> "DeviceSplit":
        """The same split and normalisation with other uint8 images (a corrupted copy, say)."""
        other = object.__new__(DeviceSplit)
        other.__dict__.update(self.__dict__, images=images.to(self.images.device))
        return other

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                index: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled when a generator is given (training); otherwise in order, over the images at
        `index` when given (evaluation, analysis). `augment` maps a float batch of 0..255 pixels to
        another, before normalisation."""
        if generator is not None:
            index = torch.randperm(len(self), generator=generator)
        if index is None:
            for start in range(0, len(self), batch_size):
                yield self.normalise(self.images[start:start + batch_size]), self.labels[start:start + batch_size]
            return
        index = index.to(self.images.device)
        for start in range(0, len(index), batch_size):
            part = index[start:start + batch_size]
            # index_select, not images[part]: advanced indexing costs 5x more on CPU
            yield (self.normalise(self.images.index_select(0, part), augment),
                   self.labels.index_select(0, part))

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)
