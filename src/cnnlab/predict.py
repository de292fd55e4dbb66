"""Use a trained model: `python -m cnnlab.predict models/lenet.pt PATH... [--top-k 3] [--export FILE]`.

Each image (PATH is a file, or a folder searched for images) goes through the preprocessing stored in
the checkpoint, the same as training: turned upright by its EXIF orientation (a phone's portrait photo
is stored on its side), grayscale or RGB as the model's channels, resized to its image size,
normalised with the training split's mean and std. Prints the top-k classes with their
probabilities. `--export` also writes the model as a torch.export program (`.pt2`; TorchScript, which
torch deprecates, is not used), checked to give the same outputs as the original; load it with
`torch.export.load(path).module()`, with no cnnlab needed.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab import CnnlabError
from cnnlab.engine.batches import DeviceSplit
from cnnlab.engine.checkpoints import load_checkpoint, tta_of
from cnnlab.datasets.folder import IMAGE_SUFFIXES, BadImage, decode_files, hidden
from cnnlab.engine.inference import autocast_dtype, run
from cnnlab.plumbing.outputs import write_atomically
from cnnlab.runtime import pick_device


def shown(path: Path | str) -> str:
    """A path on one line: a newline or other control character in a name is written escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def image_paths(paths: list[str]) -> list[Path]:
    """Files as given; folders searched (sorted, recursively) for files with an image suffix."""
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(hidden(part) for part in p.relative_to(path).parts))  # ._x.jpg, .git/
        elif path.is_file():
            found.append(path)
        else:
            raise CnnlabError(f"{shown(path)}: no such file or folder")
    if not found:
        raise CnnlabError(f"no images under {', '.join(paths)}")
    return found


def load_images(paths: list[Path], channels: int, size: int) -> torch.Tensor:
    """uint8 [N, C, size, size], decoded as the folder dataset decodes training images (EXIF orientation
    applied, transparency flattened onto white: cnnlab.datasets.folder.pixels)."""
    try:
        return torch.from_numpy(decode_files([str(path) for path in paths], "L" if channels == 1 else "RGB", size))
    except BadImage as err:
        raise CnnlabError(f"{shown(err.path)}: {err.why}; {err.fix}") from None


def predict(checkpoint: str | Path, paths: list[str], top_k: int = 3, batch_size: int = 256
            ) -> list[tuple[Path, list[tuple[str, float]]]]:
    """(image path, [(class, probability)] best first) for every image."""
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint, device)
    files = image_paths(paths)
    images = load_images(files, ckpt["in_channels"], ckpt["image_size"])
    data = DeviceSplit(images, torch.zeros(len(images), dtype=torch.long), ckpt["mean"], ckpt["std"], device)
    probabilities = torch.cat([F.softmax(logits, 1).cpu() for logits, _ in run(
        model, data, batch_size, autocast_dtype(ckpt.get("precision", "fp32"), device),
        tta=tta_of(ckpt))])
    best = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    return [(path, [(ckpt["classes"][int(c)], float(p)) for p, c in zip(values, classes)])
            for path, values, classes in zip(files, best.values, best.indices)]


def export(checkpoint: str | Path, target: str | Path, tolerance: float = 1e-5) -> float:
    """Write the model as a torch.export program (input: normalised images [N, C, H, H], any N);
    return the largest difference between the saved program's logits and the original model's on
    random inputs, which must stay below `tolerance`."""
    model, ckpt = load_checkpoint(checkpoint, torch.device("cpu"))
    shape = (ckpt["in_channels"], ckpt["image_size"], ckpt["image_size"])
    generator = torch.Generator().manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (torch.randn(2, *shape, generator=generator),), dynamic_shapes=({0: batch},))
    target = Path(target)
    with warnings.catch_warnings():  # torch.export's own note about CPU weights, on every save: not ours to act on
        warnings.filterwarnings("ignore", message="No complete tensor found")
        write_atomically(target, lambda path: torch.export.save(program, str(path)))
    check = torch.randn(8, *shape, generator=generator)
    with torch.no_grad():
        difference = float((torch.export.load(str(target)).module()(check) - model(check)).abs().max())
    if not difference <= tolerance:
        target.unlink()
        raise CnnlabError(f"{checkpoint}: the exported program differs from the model by {difference:g}; not exported")
    return difference


def check_files(checkpoint: str, target: str | None) -> None:
    """One line, before any work, for a folder given as the checkpoint or an export that would
    replace the checkpoint it is made from."""
    if Path(checkpoint).is_dir():
        raise CnnlabError(f"{shown(checkpoint)}: a folder, not a checkpoint; give the file the train stage "
                          "wrote, e.g. models/lenet.pt")
    if target is not None and Path(target).resolve() == Path(checkpoint).resolve():
        raise CnnlabError(f"--export {shown(target)}: that is the checkpoint itself and would be replaced; "
                          "export to another file, e.g. lenet.pt2")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint the train stage wrote, e.g. models/lenet.pt")
    parser.add_argument("paths", nargs="*", help="image files or folders")
    parser.add_argument("--top-k", type=int, default=3, help="how many classes to print per image (3)")
    parser.add_argument("--export", metavar="FILE", help="also write the model as a torch.export program to FILE (.pt2)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise CnnlabError(f"--top-k must be at least 1; got {args.top_k}")
    check_files(args.checkpoint, args.export)
    if args.paths:
        for path, best in predict(args.checkpoint, args.paths, args.top_k):
            print(f"{shown(path)}: " + ", ".join(f"{name} {p:.1%}" for name, p in best))
    if args.export:
        difference = export(args.checkpoint, args.export)
        print(f"exported {shown(args.export)} (torch.export; largest difference from the original {difference:.1e})")
    if not args.paths and not args.export:
        parser.error("give image paths, --export FILE, or both")


if __name__ == "__main__":
    from cnnlab.plumbing import stage
    stage.run(main, sweep=False)
