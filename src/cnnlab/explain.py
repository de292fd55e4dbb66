"""Attribution maps and how far to trust them. A method maps (model, normalised images, target classes)
to one map per image [N, H, W]: Grad-CAM and Guided Grad-CAM on the layer the model's spec declares,
integrated gradients, and captum's input gradients and occlusion, for any model, and a seeded random map as
the baseline. `assess` scores each by deletion and insertion (Petsiuk et al., 2018), compared with the
random map image by image with a paired bootstrap, and by the model randomisation check (Adebayo et
al., 2018); docs/analyses.md says what each verdict means."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Method = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
RANDOMISATION_LIMIT = 0.5  # a map whose rank correlation with the randomised model's stays above this fails
CURVE_STEPS = 10           # points of each deletion and insertion curve, past the first
IG_STEPS = 16              # integrated gradients' points on the path from the baseline to the image
PASS = 256                 # 28x28 images per forward pass where a method makes many of each (steps, patches)


def pass_size(image_values: int) -> int:
    """Images per such pass: PASS digits' worth of values, so a pass of larger images stays as small."""
    return max(1, PASS * 28 * 28 // image_values)
RESAMPLES = 1000           # bootstrap resamples of the images behind each verdict
FAITHFUL, NO_BETTER, UNTOLD = "faithful", "no better than random", "cannot be told from random"


def _pixels(attribution: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] attributions -> [N, H, W] importance: magnitude summed over channels."""
    return attribution.detach().abs().sum(1).float()


def grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Grad-CAM maps on the submodule `layer` (upsampled to the input, each scaled to 0..1), the
    class each map explains (the predicted one unless `target` is given) and the layer's label.

    The layer is the one the model's spec declares: the output of its last spatial block, after its
    ReLU and pooling, as pytorch-grad-cam picks for torchvision models (ResNet's layer4, AlexNet's
    features). cnnlab's blocks pool before the ReLU, so the raw Conv2d output would still hold the
    negative evidence the ReLU removes.
    """
    module = model.get_submodule(layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, inputs, output: captured.append(output))
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            act = captured[-1]
            if act.dim() != 4:
                raise ValueError(f"Grad-CAM needs a spatial output; layer {layer} gives {tuple(act.shape)}")
            act.retain_grad()
            target = logits.argmax(1) if target is None else target
            logits.gather(1, target.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    grad, act = act.grad.detach(), act.detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)            # importance of each channel for the class
    cam = F.relu((weights * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return cam / peak, target, f"{layer} ({type(module).__name__})"


def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Guided backpropagation [N, H, W]: the gradient of each target logit with respect to the input,
    with only positive gradients let through every ReLU module (Springenberg et al.). Fine-grained but
    not class-discriminative on its own; multiplied by Grad-CAM it gives Guided Grad-CAM."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    inplace = [m.inplace for m in relus]
    handles = []
    try:
        for relu in relus:
            relu.inplace = False  # backward hooks refuse modules that overwrite their input
            handles.append(relu.register_full_backward_hook(lambda mod, grad_in, grad_out: (grad_in[0].clamp(min=0),)))
        model.eval()
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            model(x).gather(1, target.view(-1, 1)).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        for relu, flag in zip(relus, inplace):
            relu.inplace = flag
        model.zero_grad(set_to_none=True)
    return x.grad.detach().clamp(min=0).amax(1)


def guided_grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(Grad-CAM, Guided Grad-CAM, the class explained, layer): the Grad-CAM paper's two maps, for the
    predicted class unless `target` is given. Grad-CAM on the last block is class-discriminative but
    as coarse as that block (5x5 for LeNet); Guided Grad-CAM multiplies it by guided backpropagation
    to reach the input's resolution. Each map is scaled to a peak of 1."""
    cam, target, label = grad_cam(model, layer, x, target)
    guided = guided_backprop(model, x, target) * cam
    return cam, guided / guided.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1), target, label


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., 2017) from a mean (0) image: the target's gradient at
    IG_STEPS points of the straight path to each image, weighted as captum's default (Gauss-Legendre),
    times the image. A pass holds a few images' every step, or one image's few steps (at least two, as
    captum). Written here: importing captum imports matplotlib, which training never uses."""
    nodes, weights = np.polynomial.legendre.leggauss(IG_STEPS)
    alphas = torch.tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)
    weights = torch.tensor(weights / 2, dtype=torch.float32, device=x.device).view(-1, 1, 1, 1, 1)
    size = pass_size(x[0].numel())
    chunk, steps, maps = max(1, size // IG_STEPS), min(IG_STEPS, max(2, size)), []
    for images, classes in zip(x.detach().split(chunk), target.split(chunk)):
        total = torch.zeros(images.shape, device=x.device)
        for alpha, weight in zip(alphas.split(steps), weights.split(steps)):
            with torch.enable_grad():
                path = (alpha * images).flatten(0, 1).requires_grad_(True)  # step-major: [steps * n, C, H, W]
                score = model(path).gather(1, classes.repeat(len(alpha)).view(-1, 1)).sum()
                grads = torch.autograd.grad(score, path)[0].view(len(alpha), *images.shape)  # the weights' grads untouched
            total += (weight * grads.float()).sum(0)
        maps.append(_pixels(total * images.float()))
    return torch.cat(maps)


def input_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import Saliency  # captum imports matplotlib: only the methods that need it pay for it
    return _pixels(Saliency(model).attribute(x.detach().requires_grad_(True), target=target, abs=True))


def occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How much the class score drops when a patch (a seventh of the side, on a 7x7 grid) is set to
    the mean: positive where the evidence is."""
    from captum.attr import Occlusion
    side = stride = max(2, x.shape[-1] // 7)
    with torch.no_grad():
        found = Occlusion(model).attribute(x, target=target, sliding_window_shapes=(x.shape[1], side, side),
                                           strides=(x.shape[1], stride, stride), baselines=0.0,
                                           perturbations_per_eval=max(1, pass_size(x[0].numel()) // len(x)))
    return found.sum(1).clamp_min(0).float()


def random_map(seed: int) -> Method:
    def random(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape[0], *x.shape[2:], generator=torch.Generator().manual_seed(seed))
    return random


def gradcam_methods(layer: str) -> dict[str, Method]:
    """Grad-CAM and Guided Grad-CAM on `layer`, for the given classes."""

    def gradcam(model, x, target):
        return grad_cam(model, layer, x, target)[0]

    def guided_gradcam(model, x, target):
        return guided_grad_cam(model, layer, x, target)[1]

    return {"gradcam": gradcam, "guided_gradcam": guided_gradcam}


def methods(attribution_layer: str | None, seed: int) -> dict[str, Method]:
    """Every method that applies to a model: Grad-CAM's two only with a declared spatial layer."""
    found = gradcam_methods(attribution_layer) if attribution_layer else {}
    found.update(integrated_gradients=integrated_gradients, input_gradients=input_gradients, occlusion=occlusion)
    found["random"] = random_map(seed)
    return found


@torch.no_grad()
def probability_curves(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                       steps: int = CURVE_STEPS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fractions of pixels, deletion curves, insertion curves), a curve [steps + 1] per image: the
    target class's probability after removing (or with only) the top-ranked fraction of pixels, at
    steps + 1 points from 0 to 1. The steps of a few images at a time run as one batch per curve."""
    chunk = max(1, pass_size(x[0].numel()) // (steps + 1))
    if len(x) > chunk:
        parts = [probability_curves(model, x[i:i + chunk], target[i:i + chunk], maps[i:i + chunk], steps)
                 for i in range(0, len(x), chunk)]
        return parts[0][0], np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    n, pixels = x.shape[0], maps[0].numel()
    order = maps.flatten(1).argsort(1, descending=True)           # pixel ranks per image
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels).expand(n, -1))
    fractions = torch.linspace(0, 1, steps + 1)
    kept = rank.unsqueeze(0) < (fractions * pixels).round().view(-1, 1, 1)   # [steps+1, N, pixels]
    kept = kept.view(steps + 1, n, 1, *x.shape[2:]).to(x.dtype)
    curves = []
    for inside in (1 - kept, kept):   # deletion keeps what is not yet removed; insertion what is added
        images = (x.unsqueeze(0) * inside).flatten(0, 1)
        probs = F.softmax(model(images).float(), 1).view(steps + 1, n, -1)
        curves.append(probs.gather(2, target.view(1, n, 1).expand(steps + 1, n, 1))[..., 0].T.cpu().numpy())
    return fractions.numpy(), curves[0], curves[1]


def area(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """The area under each curve (the last axis): a mean probability in [0, 1]."""
    return np.trapezoid(curves, fractions, axis=-1)


def paired_interval(differences: np.ndarray, seed: int) -> tuple[float, float]:
    """A percentile-bootstrap interval of the mean of per-image differences, images resampled with
    the same seeded draws for every method and curve (so the pairs stay paired). Each is a 97.5%
    interval, so that a verdict resting on two (deletion and insertion) holds with 95% (Bonferroni)."""
    draws = np.random.default_rng(seed).integers(0, len(differences), (RESAMPLES, len(differences)))
    low, high = np.percentile(differences[draws].mean(1), [1.25, 98.75])
    return float(low), float(high)


def faithfulness(deletion: tuple[float, float], insertion: tuple[float, float]) -> str:
    """The verdict from the intervals of (method - random) AUC: deletion must lie below 0 and
    insertion above it."""
    if deletion[1] < 0 < insertion[0]:
        return FAITHFUL
    if deletion[0] > 0 or insertion[1] < 0:
        return NO_BETTER
    return UNTOLD


def cascade(model: nn.Module, seed: int) -> list[tuple[str, nn.Module]]:
    """(layer, a copy of the model with that layer and every layer above it re-initialised), from
    the top layer down (Adebayo et al.'s cascading randomisation)."""
    layers = [(name, m) for name, m in model.named_modules() if hasattr(m, "reset_parameters")
              and any(True for _ in m.parameters(recurse=False))]
    torch.manual_seed(seed)
    randomised, steps = copy.deepcopy(model), []
    own = dict(randomised.named_modules())
    for name, _ in reversed(layers):
        own[name].reset_parameters()
        steps.append((name, copy.deepcopy(randomised).eval()))
    return steps


def peak_bytes(model: nn.Module, image_shape: tuple[int, int, int], images: int, methods: int,
               steps: int = CURVE_STEPS) -> int:
    """An estimate of the most memory `assess` adds for `images` images of `image_shape` (channels,
    height, width) and `methods` methods: the model's randomised copies, the images and every
    method's maps, and its largest pass. Input gradients and Grad-CAM pass all images at once;
    integrated gradients, occlusion and the curves at most PASS. Each image of a pass holds four
    times the image and every layer's output: the outputs, their gradients, and the copies autograd
    and the methods make (measured on a 2-core Xeon: lenet, 2000 images of 28x28, 382 MiB)."""
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, inputs, output: sizes.append(output.numel() * output.element_size()))
             for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *image_shape, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    image = 4 * int(np.prod(image_shape))
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    layers = sum(1 for m in model.modules() if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)))
    kept = images * (image + methods * 4 * image_shape[1] * image_shape[2])
    largest_pass = max(images, min(pass_size(int(np.prod(image_shape))), images * max(IG_STEPS, steps + 1)))
    return (layers + 1) * parameters + kept + largest_pass * 4 * (image + sum(sizes))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean Spearman correlation between matching maps (a map with no variation counts as 0)."""
    from scipy.stats import spearmanr  # here, not at the top: the train stage's watch never ranks, and scipy.stats is slow to import
    values = []
    for one, other in zip(a.flatten(1).numpy(), b.flatten(1).numpy()):
        rho = spearmanr(one, other).statistic if one.std() > 0 and other.std() > 0 else 0.0
        values.append(0.0 if np.isnan(rho) else float(rho))
    return float(np.mean(values))


def assess(model: nn.Module, x: torch.Tensor, named: dict[str, Method], seed: int, steps: int = CURVE_STEPS,
           randomisation_images: int = 8) -> tuple[dict, list[dict], list[dict], dict[str, torch.Tensor]]:
    """Each method's maps for the images `x` (explaining the predicted class), scored against the
    method named "random", which `named` must hold.

    Returns (numbers per method: deletion_auc and insertion_auc (means over the images), images,
    the 95% intervals of the mean per-image difference from random's AUC (deletion_minus_random_low
    and _high, insertion_minus_random_low and _high), faithfulness (the verdict word), beats_random
    (faithful), randomized_spearman, passes_randomization; curve rows (mean curves): method, curve,
    fraction, probability; cascade rows: method, layer, spearman; the maps)."""
    if "random" not in named:
        raise ValueError("assess needs a method named 'random' to compare the others with")
    model.eval()
    with torch.no_grad():
        target = model(x).argmax(1)
    numbers, curves, cascade_rows, maps, aucs = {}, [], [], {}, {}
    randomised = cascade(model, seed)
    few = slice(0, randomisation_images)
    for name, method in named.items():
        maps[name] = method(model, x, target).detach().float().cpu()
        fractions, deletion, insertion = probability_curves(model, x, target, maps[name].to(x.device), steps)
        curves += [{"method": name, "curve": kind, "fraction": round(float(f), 4), "probability": float(p)}
                   for kind, values in (("deletion", deletion.mean(0)), ("insertion", insertion.mean(0)))
                   for f, p in zip(fractions, values)]
        rho = 1.0
        for layer, random_model in randomised:
            rho = rank_correlation(maps[name][few], method(random_model, x[few], target[few]).detach().float().cpu())
            cascade_rows.append({"method": name, "layer": layer, "spearman": rho})
        aucs[name] = {"deletion": area(fractions, deletion), "insertion": area(fractions, insertion)}
        numbers[name] = {"deletion_auc": float(aucs[name]["deletion"].mean()),
                         "insertion_auc": float(aucs[name]["insertion"].mean()), "randomized_spearman": rho}
    for name, n in numbers.items():
        n.update(against_random(aucs[name], aucs["random"], seed))
        n["passes_randomization"] = n["randomized_spearman"] < RANDOMISATION_LIMIT
    return numbers, curves, cascade_rows, maps


def against_random(method: dict[str, np.ndarray], random: dict[str, np.ndarray], seed: int) -> dict:
    """A method's per-image deletion and insertion AUCs compared with the random map's on the same
    images: the intervals, how many images they rest on and the verdict."""
    found = {"images": len(method["deletion"])}
    for curve in ("deletion", "insertion"):
        low, high = paired_interval(method[curve] - random[curve], seed)
        found.update({f"{curve}_minus_random_low": low, f"{curve}_minus_random_high": high})
    found["faithfulness"] = faithfulness((found["deletion_minus_random_low"], found["deletion_minus_random_high"]),
                                         (found["insertion_minus_random_low"], found["insertion_minus_random_high"]))
    found["beats_random"] = found["faithfulness"] == FAITHFUL
    return found


def best(numbers: dict) -> str | None:
    """The method with the widest gap between insertion and deletion AUC among those that are
    faithful (beat random by the bootstrap's margin) and pass the randomisation check (None when
    none does)."""
    trusted = [name for name, n in numbers.items() if n["faithfulness"] == FAITHFUL and n["passes_randomization"]]
    return max(trusted, key=lambda name: numbers[name]["insertion_auc"] - numbers[name]["deletion_auc"], default=None)
