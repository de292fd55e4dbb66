import pytest
import torch

from cnnlab.augment import augment, random_crop, random_hflip, random_shift_scale, salt_and_pepper
from cnnlab.config.params import AUGMENT_OFF


def numbered(n=64, c=1, size=8):
    """Every pixel holds a distinct value, so where each one went can be read back."""
    return torch.arange(n * c * size * size, dtype=torch.float32).view(n, c, size, size) % 251 + 1


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = numbered()
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    offsets = set()
    for original, cropped in zip(images, out):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[:, dy:dy + 8, dx:dx + 8], cropped)]
        assert len(hits) == 1           # exactly one window of the padded image
        offsets.add(hits[0])
    assert len(offsets) > 10            # and the windows differ from image to image


def test_hflip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    images = numbered(n=400)
    out = random_hflip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 150 < sum(flipped) < 250


def test_shift_and_scale_move_a_dot_but_keep_it_in_the_image():
    images = torch.zeros(200, 1, 28, 28)
    images[:, :, 13:15, 13:15] = 255
    out = random_shift_scale(images, 0.1, 0.1, torch.Generator().manual_seed(0))
    grid = torch.arange(28.0)
    mass = out.sum(dim=(1, 2, 3))
    centre_x = (out.sum(dim=(1, 2)) * grid).sum(-1) / mass
    assert (mass > 0).all()
    assert centre_x.std() > 0.5                          # the dot moved, differently per image
    assert (centre_x - 13.5).abs().max() <= 0.1 * 28 + 1.5  # by at most the asked shift (plus blur)


@pytest.mark.parametrize("amount", [0.05, 0.2])
def test_training_noise_hits_the_asked_fraction_with_0_and_255(amount):
    images = torch.full((50, 1, 28, 28), 128.0)
    out = salt_and_pepper(images, amount, torch.Generator().manual_seed(0))
    changed = out != 128
    assert abs(changed.float().mean().item() - amount) < 0.01
    assert set(out[changed].unique().tolist()) == {0.0, 255.0}


def test_all_off_changes_nothing_and_draws_are_seeded():
    images = numbered()
    assert torch.equal(augment(images, AUGMENT_OFF, torch.Generator().manual_seed(0)), images)
    options = {**AUGMENT_OFF, "crop_padding": 2, "hflip": True, "shift": 0.1, "noise": 0.05}
    a = augment(images, options, torch.Generator().manual_seed(3))
    b = augment(images, options, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, images)


def test_a_uint8_batch_gets_exactly_what_its_float_copy_gets():
    """Crop and flip run before the float conversion: the same draws, the same pixels, floats out."""
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    options = {**AUGMENT_OFF, "crop_padding": 2, "hflip": True, "shift": 0.1, "noise": 0.05}
    as_uint8 = augment(images, options, torch.Generator().manual_seed(3))
    as_float = augment(images.float(), options, torch.Generator().manual_seed(3))
    assert as_uint8.dtype == torch.float32 and torch.equal(as_uint8, as_float)
    crop_flip = {**AUGMENT_OFF, "crop_padding": 2, "hflip": True}
    assert torch.equal(augment(images, crop_flip, torch.Generator().manual_seed(5)),
                       augment(images.float(), crop_flip, torch.Generator().manual_seed(5)))
