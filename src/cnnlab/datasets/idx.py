"""The MNIST family (MNIST, Fashion-MNIST, KMNIST): four IDX files each, fetched as torchvision lists
them and kept uncompressed in torchvision's layout, `data/raw/<Class>/raw/<file>`.

Integrity is checked on the uncompressed content wherever its checksum is known (MNIST): a mirror may
hold the files compressed or plain, re-compressed even, and the content is what matters. Where only
the original archive's checksum is known (torchvision's list), the file must be served as that .gz.
The file names are cnnlab's own: a download from a mirror imports neither torch nor torchvision.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

from cnnlab import CnnlabError
from cnnlab.datasets import DatasetSpec
from cnnlab.datasets.files import (check_md5, download, downloaded, in_mirror, is_gzip, md5_of,
                                   torchvision_attribute)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _torchvision(spec: DatasetSpec, attribute: str):
    return torchvision_attribute("mnist", spec.meta["torchvision"], attribute)


# the uncompressed name of each raw file, in torchvision's order: the same four for the whole family
FILES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


def archive_md5(spec: DatasetSpec, name: str) -> str:
    """The original archive's MD5, from torchvision's list. Asked only to download or to verify a
    file whose content checksum is unknown: importing torchvision's datasets takes longer than
    fetching MNIST from a mirror."""
    return dict(_torchvision(spec, "resources"))[f"{name}.gz"]


MAX_BYTES = 1 << 32  # no IDX dataset cnnlab reads comes near 4 GiB (MNIST's largest file: 47 MB)


def _copy_idx(source, target: Path, name: str, where: Path) -> None:
    """Copy one IDX stream (gzipped or plain) to target, reading no more than its header declares:
    a file that claims more than MAX_BYTES, or holds more or less than it claims, stops here, before
    a decompression bomb is written out."""
    import struct
    header = source.read(4)
    if len(header) < 4 or header[:2] != b"\0\0" or header[2] != 0x08 or not 1 <= header[3] <= 4:
        raise CnnlabError(f"{where}: not an IDX file of unsigned bytes (magic {header.hex() or 'missing'}, "
                          f"expected 0000080N); replace it with the original {name}")
    expected_dims = 1 if "labels" in name else 3
    dims_bytes = source.read(4 * header[3])
    dims = struct.unpack(f">{header[3]}I", dims_bytes) if len(dims_bytes) == 4 * header[3] else ()
    if len(dims) != expected_dims:
        raise CnnlabError(f"{where}: declares {header[3]} dimensions {dims}, but {name} has {expected_dims}")
    size = 1
    for dim in dims:
        size *= dim
    if size > MAX_BYTES:
        raise CnnlabError(f"{where}: declares {' x '.join(map(str, dims))} = {size:,} bytes, over the "
                          f"{MAX_BYTES:,}-byte limit; not an original {name}")
    with open(target, "wb") as out:
        out.write(header + dims_bytes)
        left = size
        while left:
            chunk = source.read(min(left, 1 << 20))
            if not chunk:
                raise CnnlabError(f"{where}: truncated: {size - left:,} of the {size:,} bytes its header "
                                  f"declares; replace it with the original {name}")
            out.write(chunk)
            left -= len(chunk)
    if source.read(1):
        raise CnnlabError(f"{where}: holds more than the {size:,} bytes its header declares; not an original {name}")


def _verify(spec: DatasetSpec, name: str, source: Path, content: Path) -> None:
    expected = spec.meta.get("content_md5", {}).get(name)
    if expected is not None:
        actual = md5_of(content)
        if actual != expected:
            raise CnnlabError(
                f"{source}: corrupt or not the original {name}: content MD5 {actual}, expected {expected}; "
                f"replace it with the original file")
        return
    if not is_gzip(source):
        raise CnnlabError(
            f"{source}: cannot verify {name}: only the original archive's checksum is known for "
            f"{spec.name}; provide the original {name}.gz")
    check_md5(source, f"{name}.gz", archive_md5(spec, name))


def fetch(spec: DatasetSpec, root: Path, mirror: Path | None, verify: bool, path=None) -> None:
    raw = root / spec.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp)
        for name in FILES:
            if mirror is not None:
                source = in_mirror(mirror, f"{spec.folder}/raw/{name}", f"{spec.folder}/raw/{name}.gz")
            else:
                source = download([base + f"{name}.gz" for base in _torchvision(spec, "mirrors")],
                                  f"{name}.gz", archive_md5(spec, name), workdir, f"{spec.folder}/raw/{name}.gz")
            content = workdir / name
            try:
                with (gzip.open(source, "rb") if is_gzip(source) else open(source, "rb")) as src:
                    _copy_idx(src, content, name, source)
            except (OSError, EOFError) as err:
                raise CnnlabError(f"{source}: unreadable ({err}); replace it with the original file") from None
            if verify:
                _verify(spec, name, source, content)
            os.replace(content, raw / name)
    return raw


def read_idx(path: Path, dims: int):
    """An IDX file of unsigned bytes as a uint8 tensor of its declared shape (torchvision's
    read_image_file does the same, but importing it imports all of torchvision)."""
    import struct
    import numpy as np
    import torch
    data = path.read_bytes()
    start = 4 + 4 * dims
    if len(data) < start or data[:4] != bytes((0, 0, 0x08, dims)):
        raise CnnlabError(f"{path}: not valid IDX data (magic {data[:4].hex()}, expected 000008{dims:02x})")
    shape = struct.unpack(f">{dims}I", data[4:start])
    if len(data) - start != int(np.prod(shape)):
        raise CnnlabError(f"{path}: not valid IDX data ({len(data) - start:,} bytes after the header, "
                          f"{int(np.prod(shape)):,} declared)")
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=start).reshape(shape).copy())


def decode(spec: DatasetSpec, root: Path, split: str, image_size: int = 0):
    import torch
    raw = root / spec.folder / "raw"
    image_file, label_file = (downloaded(raw / name) for name in SPLIT_FILES[split])
    images, labels = read_idx(image_file, 3), read_idx(label_file, 1).to(torch.long)
    if len(images) != len(labels):
        raise CnnlabError(f"{raw}: {split} has {len(images)} images but {len(labels)} labels")
    return images.unsqueeze(1).contiguous(), labels.long()


def classes(spec: DatasetSpec, root: Path) -> tuple[str, ...]:
    return spec.meta.get("classes") or tuple(_torchvision(spec, "classes"))
