"""Training augmentation on whole batches, on the training device, in pixel units (0..255) before
normalisation: every image gets its own random draw from a few tensor ops per batch, no per-sample
Python or PIL. The options are `train.augment`'s (params.yaml says what each does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=images.device)
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=images.device)
    rows = top + torch.arange(height, device=images.device).view(1, -1, 1)   # [n, H, 1]
    cols = left + torch.arange(width, device=images.device).view(1, 1, -1)   # [n, 1, W]
    batch = torch.arange(n, device=images.device).view(-1, 1, 1)
    # gather every image's own window in one indexing op: [n, H, W, C] -> [n, C, H, W]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def random_shift_scale(images: torch.Tensor, shift: float, scale: float, generator: torch.Generator
                       ) -> torch.Tensor:
    n = len(images)

    def uniform(bound: float) -> torch.Tensor:  # in [-bound, bound]
        return (torch.rand(n, generator=generator, device=images.device) * 2 - 1) * bound

    zoom = 1 + uniform(scale)
    theta = torch.zeros(n, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2] = uniform(2 * shift)   # affine_grid spans -1..1, so a shift of f is 2f there
    theta[:, 1, 2] = uniform(2 * shift)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def salt_and_pepper(images: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """A fraction `amount` of the values replaced, half by 0 (pepper), half by 255 (salt); float pixel
    batches (training) or uint8 images (the noise study) alike. The draw is made on the generator's
    device, so a CPU generator gives the same noise whatever device the images are on."""
    if amount <= 0:
        return images.clone()
    draw = torch.rand(images.shape, generator=generator, device=generator.device).to(images.device)
    images = images.masked_fill(draw < amount / 2, 0)
    return images.masked_fill((draw >= amount / 2) & (draw < amount), 255)


def is_on(options: dict) -> bool:
    return bool(options["crop_padding"] or options["hflip"] or options["shift"] or options["scale"]
                or options["noise"])


def augment(images: torch.Tensor, options: dict, generator: torch.Generator) -> torch.Tensor:
    """Apply the enabled augmentations to a batch [N, C, H, W] of 0..255 pixel values (uint8 or
    float); return floats. The draws come in the same order either way, so a uint8 batch and its
    float copy get the same result."""
    if options["crop_padding"]:
        images = random_crop(images, options["crop_padding"], generator)
    if options["hflip"]:
        images = random_hflip(images, generator)
    images = images.float()
    if options["shift"] or options["scale"]:
        images = random_shift_scale(images, options["shift"], options["scale"], generator)
    if options["noise"]:
        images = salt_and_pepper(images, options["noise"], generator)
    return images


def generator(cfg: dict, device: torch.device, rank: int = 0) -> torch.Generator | None:
    """The augmentation's own random generator, on the training device (drawing on the CPU and copying
    would wait for the GPU every batch), seeded from `train.seed` and the rank; None when all is off."""
    if not is_on(cfg["augment"]):
        return None
    return torch.Generator(device=device).manual_seed(cfg["seed"] + 1 + rank)


def for_training(cfg: dict, generator: torch.Generator | None):
    """The batch augmentation of `train.augment`, or None when all is off."""
    if generator is None:
        return None
    return lambda images: augment(images, cfg["augment"], generator)
