"""Dataset catalogue: every dataset's name, raw folder, file format and format-specific facts.

Plain data, no torch and no decoding code: params validation (every stage) reads the names from
here, so a change to a decoder reruns only the stages that fetch or decode (download and prepare),
never training. The code lives in one module per file format (idx.py: the MNIST family, cifar.py,
svhn.py, folder.py: the user's own images), reached through formats.py; files.py holds the helpers
they share (mirror, download, checksums, atomic placement).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # under data/raw and in the mirror, in torchvision's layout
    format: str  # the module of this package that fetches and decodes it
    meta: dict = field(default_factory=dict)  # what the format module needs (file lists, checksums)


class ClassNames(tuple):
    """A dataset's class names, carrying the data card of its files (what download found and did:
    files skipped, images turned or converted, ...), which prepare extends into its own."""
    card: dict

    def __new__(cls, names, card: dict | None = None):
        self = super().__new__(cls, names)
        self.card = dict(card or {})
        return self


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


register_dataset(DatasetSpec("mnist", "MNIST", "idx", {
    "torchvision": "MNIST", "classes": tuple(str(d) for d in range(10)),
    # MD5 of each file's uncompressed content, so a re-compressed .gz passes
    "content_md5": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }}))
register_dataset(DatasetSpec("fashion_mnist", "FashionMNIST", "idx", {"torchvision": "FashionMNIST"}))
register_dataset(DatasetSpec("kmnist", "KMNIST", "idx", {"torchvision": "KMNIST"}))
register_dataset(DatasetSpec("cifar10", "cifar-10-batches-py", "cifar", {"torchvision": "CIFAR10", "label_key": "labels"}))
register_dataset(DatasetSpec("cifar100", "cifar-100-python", "cifar",
                             {"torchvision": "CIFAR100", "label_key": "fine_labels"}))
register_dataset(DatasetSpec("svhn", "SVHN", "svhn"))
register_dataset(DatasetSpec("folder", "folder", "folder"))  # data.path; classes from the folder names
