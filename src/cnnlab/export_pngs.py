"""Prepared images as PNG files, to try `cnnlab.predict` and the folder dataset on:
`python -m cnnlab.export_pngs FOLDER [--split test] [--classes 2 7 9] [--per-class 1]`.

Writes the first images of each asked class of a split the prepare stage wrote (data/prepared) as
FOLDER/<class>/<class>_<i>.png, and prints how many each class got.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from cnnlab import CnnlabError
from cnnlab.config.paths import PREPARED
from cnnlab.prepare import SPLITS, load_prepared


def write_pngs(folder: Path, split: str, classes: list[str], per_class: int,
               prepared: Path = PREPARED) -> dict[str, int]:
    """{class: images written}; each class's first `per_class` images of `split`, or all it has."""
    data = load_prepared(prepared, [split])
    names = data["info"]["classes"]
    unknown = [name for name in classes if name not in names]
    if unknown:
        raise CnnlabError(f"--classes {' '.join(unknown)}: not a class of {prepared}/info.json; "
                          f"its classes are {', '.join(names)}")
    images, labels = data[split]
    written = {}
    for name in classes:
        target = Path(folder) / name
        target.mkdir(parents=True, exist_ok=True)
        picked = (labels == names.index(name)).nonzero().flatten()[:per_class]
        for i, index in enumerate(picked.tolist()):
            pixels = images[index].numpy().transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
            Image.fromarray(pixels.squeeze(2) if pixels.shape[2] == 1 else pixels).save(target / f"{name}_{i}.png")
        written[name] = len(picked)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.export_pngs", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where to write the class folders, e.g. digits")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which prepared split (test)")
    parser.add_argument("--classes", nargs="+", required=True, help="class names, as in data/prepared/info.json")
    parser.add_argument("--per-class", type=int, default=1, help="images per class, at most (1)")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        raise CnnlabError(f"--per-class must be at least 1; got {args.per_class}")
    written = write_pngs(Path(args.folder), args.split, args.classes, args.per_class)
    print(f"{args.folder}: " + ", ".join(f"{count} of class {name}" for name, count in written.items())
          + f" (from the prepared {args.split} split)")


if __name__ == "__main__":
    from cnnlab.plumbing import stage
    stage.run(main, sweep=False)
