"""The data path: a split lives on the training device as uint8, batches are cut by index and
normalised as whole tensors. No per-sample Python and no loader workers, so the cost of a batch is a
gather and one fused multiply-subtract, far below the model's own forward and backward pass.

A split larger than the device's budget (`data.max_device_bytes`, or half the free GPU memory) stays
where it is in host memory (a memory map of data/prepared: the page cache holds what is read), and
each batch is gathered there, staged in pinned memory on CUDA and copied to the device: the same
batches in the same order, so the same results, for one transfer per step. On a CPU the split is
never copied: batches are gathered from the map. Wherever a split stays in host memory, a
`readahead` may ask the disk for the next batch's rows while this one trains (a split bigger than
memory is read from disk every epoch).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch


class DeviceBudget:
    """The bytes of image data a stage may keep on `device`: `limit` (data.max_device_bytes), or by
    default half the free memory of a CUDA device (the rest is for the model and its activations).
    On a CPU the device is host memory, so there is no default limit."""

    def __init__(self, device: torch.device, limit: int | None = None):
        if limit is None and device.type == "cuda":
            from cnnlab.runtime import available_bytes
            limit = available_bytes(device) // 2
        self.device, self.left = device, limit

    def take(self, images: torch.Tensor) -> bool:
        """Whether these images go on the device (and count against the budget)."""
        size = images.numel() * images.element_size()
        if self.left is not None and size > self.left:
            return False
        if self.left is not None:
            self.left -= size
        return True


class DeviceSplit:
    """One split (images uint8 [N, C, H, W], labels int64 [N]) for training on `device`: the images
    held there, or in host memory when `budget` has no room for them; the labels always there."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 budget: DeviceBudget | None = None, readahead: Callable[[torch.Tensor], None] | None = None):
        if images.dtype != torch.uint8:
            raise TypeError("images must be uint8")
        self.device = device
        self.on_device = budget is None or budget.take(images)
        # on a CPU, or off the device, the images stay as they are (a memory map): batches are gathered from them
        self.images = images.to(device) if self.on_device else images.cpu()
        self.readahead = readahead if self.images.device.type == "cpu" else None  # host rows: a memory map
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
        # a no-op for a split on the device; one host-to-device copy per batch otherwise
        images = images_uint8.to(self.device, non_blocking=True)
        # augmentation works in pixel units (padding and noise are plain 0/255) and returns floats
        images = augment(images) if augment is not None else images.float()
        images = images.mul_(self.scale).sub_(self.shift)
        return images.contiguous(memory_format=self.memory_format)

    def with_images(self, images: torch.Tensor) -> "DeviceSplit":
        """The same split and normalisation with other uint8 images (a corrupted copy, say)."""
        other = object.__new__(DeviceSplit)
        other.__dict__.update(self.__dict__, images=images.to(self.images.device))
        return other

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                index: torch.Tensor | None = None, shard: tuple[int, int] = (0, 1)
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled when a generator is given (training); otherwise in order, over the images at
        `index` when given (evaluation, analysis). `augment` maps a uint8 batch to a float batch
        of 0..255 pixels, before normalisation. `shard=(rank, ranks)`: every rank draws the same
        permutation and the same global batches of `batch_size`, and takes its own contiguous part
        of each."""
        if generator is not None:
            index = torch.randperm(len(self), generator=generator)
        rank, ranks = shard
        if index is None and ranks == 1:
            for start in range(0, len(self), batch_size):
                yield self.normalise(self.staged(self.images[start:start + batch_size])), \
                    self.labels[start:start + batch_size]
            return
        index = torch.arange(len(self)) if index is None else index
        image_index, label_index = index.to(self.images.device), index.to(self.device)
        for start in range(0, len(index), batch_size):
            # a rank may get an empty part of a short last batch: it still steps, as DDP needs
            images, labels = (part[start:start + batch_size].tensor_split(ranks)[rank]
                              for part in (image_index, label_index))
            if self.readahead is not None:  # this rank's rows of the next batch are read while this one trains
                upcoming = image_index[start + batch_size:start + 2 * batch_size].tensor_split(ranks)[rank]
                self.readahead(torch.cat([images, upcoming]))  # (and this batch's: the first was never asked)
            gathered = self.images.index_select(0, images)  # not images[part]: advanced indexing is much slower on CPU
            yield self.normalise(self.staged(gathered), augment), self.labels.index_select(0, labels)

    def staged(self, images: torch.Tensor) -> torch.Tensor:
        """A host batch bound for CUDA in pinned memory, so that its copy runs asynchronously."""
        if images.device != self.device and self.device.type == "cuda":
            return images.pin_memory()
        return images

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)
