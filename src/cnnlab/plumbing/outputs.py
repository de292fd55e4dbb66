"""All-or-nothing stage outputs.

A stage asks for a temporary path for each output, writes there, and only when the whole stage has
succeeded are the temporaries renamed over the real paths. A failing stage leaves no half-written
file and no mix of new and old outputs.

A temporary keeps its target's own file name, inside a hidden folder beside the target: formats that
record their file name (torch.save names the zip's root folder after it) then write the same bytes
as a direct save would, so the same training gives a byte-identical checkpoint.

Under torchrun, rank 0 cannot know that the other ranks will also end well, so it does not rename:
it hands its staged outputs over to the stage process that launched torchrun (cnnlab.plumbing.stage decides
which), which renames them only once every rank has exited cleanly, and removes them otherwise.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

TEMPORARY_PREFIX = ".cnnlab-tmp-"
HANDED_OVER = "staged.json"    # in the launcher's folder: rank 0's staged outputs, for it to commit


def _holder(target: Path, owner: int) -> Path:
    """The hidden folder beside `target` where its owner (a live process's pid, so a later stage's
    sweep leaves the folder alone) writes it first."""
    return target.parent / f"{TEMPORARY_PREFIX}{owner}"


def _temporary(target: Path, owner: int) -> Path:
    """Where `target` is written first: its own name, in its owner's hidden folder beside it."""
    holder = _holder(target, owner)
    holder.mkdir(parents=True, exist_ok=True)
    return holder / target.name


class StagedOutputs:
    def __init__(self, owner: int | None = None) -> None:
        self._owner = owner or os.getpid()
        self._pending: list[tuple[Path, Path]] = []

    last_target: Path | None = None  # the output being written: what a write failure names

    def path(self, target: str | Path) -> Path:
        """A temporary path for `target` (same filesystem, so the final rename is atomic)."""
        target = Path(target)
        self.last_target = target
        temporary = _temporary(target, self._owner)
        self._pending.append((temporary, target))
        return temporary

    def target_of(self, path) -> str | None:
        """The output a temporary path (or a file inside a temporary folder) stands for."""
        if path is None:
            return None
        path = Path(path)
        for temporary, target in self._pending:
            if path == temporary or temporary in path.parents:
                return str(target / path.relative_to(temporary)) if path != temporary else str(target)
        return str(path)

    def json(self, target: str | Path, data: dict, staged: bool = True) -> None:
        """staged=False writes straight to `target`, inside a folder that is itself a staged output."""
        with open(self.path(target) if staged else target, "w") as stream:
            json.dump(data, stream, indent=2, allow_nan=False)  # NaN/inf are not JSON: fail, never write them
            stream.write("\n")

    def text(self, target: str | Path, text: str) -> None:
        self.path(target).write_text(text)

    def csv(self, target: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
        write_csv(self.path(target), rows, columns)

    def figure(self, target: str | Path, fig, dpi: int = 110, staged: bool = True,
               metadata: dict[str, str] | None = None) -> None:
        """Save a matplotlib figure (with `metadata` in the file); staged=False writes straight to
        `target`, a path inside a folder that is itself a staged output."""
        path = self.path(target) if staged else Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(fig, path, dpi, Path(target).suffix[1:], metadata)

    def figure_of(self, target: str | Path, draw: Callable[..., Any], data: dict, dpi: int = 110,
                  inside: Path | None = None) -> bool:
        """Stage `target` as the figure `draw(**data)` makes, unless `target` already holds exactly
        that figure: then its bytes are kept and nothing is drawn, so a report-only change does not
        pay for drawing. Returns whether it drew.

        Each figure records what it was drawn from (figure_digest) in its PNG metadata; `data`
        must be JSON, and the figure a function of it, the dpi and the drawing code alone. `inside`:
        where to write it when `target` lies in a folder that is staged whole."""
        digest = figure_digest(draw, data, dpi)
        written = self.path(target) if inside is None else inside
        if drawn_from(Path(target)) == digest:
            shutil.copyfile(target, written)
            return False
        png = io.BytesIO()
        _save(draw(**data), png, dpi, "png", {DRAWN_FROM: digest})
        written.parent.mkdir(parents=True, exist_ok=True)
        _bind_pixels(png, written, digest)
        return True

    def commit(self) -> None:
        """Put every staged output in place or, if anything stops it half-way, every previous output
        back: old or new, never a mix. Ctrl-C and SIGTERM wait until it is done (signals_held)."""
        for temporary, _ in self._pending:
            _fsync(temporary)  # on disk before the rename makes it the output: a crash leaves old or new
        holders = {temporary.parent for temporary, _ in self._pending}
        with signals_held():
            done: list[tuple[Path, Path, Path]] = []
            try:
                for temporary, target in self._pending:
                    done.append((temporary, target, temporary.parent / PREVIOUS / target.name))
                    _swap_in(*done[-1])
            except BaseException:
                _finish(lambda: _swap_back(done))
                raise
            finally:
                self._pending.clear()
                _finish(lambda: _remove_all(holders))

    def discard(self) -> None:
        holders = {temporary.parent for temporary, _ in self._pending}
        self._pending.clear()
        _finish(lambda: _remove_all(holders))

    def hand_over(self, folder: Path) -> None:
        """Leave the staged outputs for the launching process to commit (which syncs them first) or
        discard. It reads the list only once every rank has exited cleanly, so never half-written."""
        pairs = [[str(temporary.resolve()), str(target.resolve())] for temporary, target in self._pending]
        (folder / HANDED_OVER).write_text(json.dumps(pairs))
        self._pending.clear()

    @classmethod
    def handed_over(cls, folder: Path) -> "StagedOutputs":
        """What a rank handed over in `folder` (nothing, if it never got that far)."""
        staged = cls()
        manifest = folder / HANDED_OVER
        if manifest.exists():
            staged._pending = [(Path(temporary), Path(target)) for temporary, target in json.loads(manifest.read_text())]
        return staged


DRAWN_FROM = "cnnlab drawn from"  # the PNG text key of a figure's digest (figure_of)
PIXELS = "cnnlab pixels"  # the PNG text key binding that digest to the file's own pixels


def figure_digest(draw: Callable[..., Any], data: dict, dpi: int) -> str:
    """What a figure is a function of: its data, in its order (the order of the models sets their
    colours and the legend), its dpi, the drawing function (by name, and its module's source, so
    any edit to the drawing code redraws), the saving code (this module's source), matplotlib's
    version and the matplotlibrc it reads (read as a file: importing matplotlib
    to ask would cost a kept figure more than drawing nothing saves)."""
    import hashlib
    import sys
    from importlib.metadata import version
    digest = hashlib.sha256(json.dumps([f"{draw.__module__}.{draw.__qualname__}", data, dpi,
                                        version("matplotlib")]).encode())
    for source in (sys.modules[draw.__module__].__file__, __file__, _matplotlibrc()):
        if source is not None and Path(source).is_file():
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def _matplotlibrc() -> Path | None:
    """The matplotlibrc that matplotlib would read, in its own order, short of its installed default."""
    import os
    given = os.environ.get("MATPLOTLIBRC")
    config = os.environ.get("MPLCONFIGDIR") or Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"),
                                                    "matplotlib")
    for candidate in ([Path(given), Path(given) / "matplotlibrc"] if given else []) + [
            Path("matplotlibrc"), Path(config) / "matplotlibrc"]:
        if candidate.is_file():
            return candidate
    return None


def _pixels_key(digest: str, pixels: bytes) -> str:
    import hashlib
    return hashlib.sha256(digest.encode() + pixels).hexdigest()


def _save(fig, target, dpi: int, kind: str, metadata: dict[str, str] | None) -> None:
    import matplotlib.pyplot as plt
    try:
        fig.savefig(target, dpi=dpi, bbox_inches="tight", format=kind, metadata=metadata)
    finally:
        plt.close(fig)


def _bind_pixels(png: io.BytesIO, path: Path, digest: str) -> None:
    """Write the PNG in `png` to `path` with the key of its own pixels added to its text: matplotlib
    renders the figure once, Pillow encodes it again (as matplotlib does)."""
    from PIL import Image, PngImagePlugin
    with Image.open(png) as image:
        info = PngImagePlugin.PngInfo()
        for key, value in image.text.items():
            info.add_text(key, value)
        info.add_text(PIXELS, _pixels_key(digest, image.tobytes()))
        image.save(path, format="png", pnginfo=info, dpi=image.info.get("dpi"))


def drawn_from(path: Path) -> str | None:
    """The digest a figure of figure_of records; None for a missing, foreign or unreadable file, and
    for a file whose pixels are not those the digest was saved with (a digest copied into another PNG)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {})
            digest = text.get(DRAWN_FROM)
            if digest is None or image.mode != "RGBA" or text.get(PIXELS) != _pixels_key(digest, image.tobytes()):
                return None
            return digest
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


PREVIOUS = ".previous"  # in a holder: the outputs a commit replaces, until it has replaced them all


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _swap_in(temporary: Path, target: Path, aside: Path) -> None:
    """Move `target` (if any) `aside`, then `temporary` into its place."""
    if _exists(target):
        aside.parent.mkdir(exist_ok=True)
        os.replace(target, aside)
    os.replace(temporary, target)


def _swap_back(done: list[tuple[Path, Path, Path]]) -> None:
    """Undo _swap_in for every output in `done`, the last one possibly half-way, newest first: each
    new output back to its temporary, each previous one back in place. Running it twice is harmless."""
    for temporary, target, aside in reversed(done):
        if not _exists(temporary) and _exists(target):
            os.replace(target, temporary)
        if _exists(aside):
            os.replace(aside, target)


def _remove_all(holders) -> None:
    for holder in holders:
        shutil.rmtree(holder, ignore_errors=True)


def _finish(step: Callable[[], None]) -> None:
    """Run a clean-up `step` to its end even if a Ctrl-C breaks in once (signals_held cannot hold
    it back outside the main thread): the step is run again, then the interruption goes on."""
    try:
        step()
    except KeyboardInterrupt:
        step()
        raise


@contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM back while the block runs: each takes effect, as it would have, once
    the block ends. Only the main thread can set handlers; elsewhere the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    held = [signum for signum in (signal.SIGINT, getattr(signal, "SIGTERM", None))
            if signum is not None and signal.getsignal(signum) is not None]  # None: set outside Python
    previous = {signum: signal.signal(signum, lambda got, frame: arrived.append(got)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            _deliver(signum, previous[signum])


def _deliver(signum: int, handler) -> None:
    """What a signal held back by signals_held would have done."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def _fsync(path: Path) -> None:
    for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        with open(file, "rb") as stream:
            os.fsync(stream.fileno())


def write_atomically(target: str | Path, write) -> None:
    """write(path) to a temporary beside `target`, synced, then renamed over it in one step. A
    failure names `target`, never the temporary."""
    holder = _holder(Path(target), os.getpid())
    try:
        temporary = _temporary(Path(target), os.getpid())
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, target)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(target)) from None
    finally:
        shutil.rmtree(holder, ignore_errors=True)


OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "report")


def _holders(folders, owner: str = "*") -> list[Path]:
    """The temporaries' folders of `owner` (a pid; "*": every owner) under the output folders."""
    return [holder for folder in map(Path, folders) if folder.is_dir()
            for holder in folder.rglob(f"{TEMPORARY_PREFIX}{owner}")]


def sweep_temporaries(folders=OUTPUT_FOLDERS) -> int:
    """Remove the temporaries of stage processes that were killed (their pid is gone); return how many."""
    swept = 0
    for holder in _holders(folders):
        try:
            os.kill(int(holder.name.removeprefix(TEMPORARY_PREFIX)), 0)
            continue  # that process still runs (a parallel stage)
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(holder, ignore_errors=True)
        swept += 1
    return swept


def remove_temporaries(owner: int, folders=OUTPUT_FOLDERS) -> None:
    """Remove what was staged for `owner` (a launcher whose ranks failed): handed over or half-written."""
    for holder in _holders(folders, str(owner)):
        shutil.rmtree(holder, ignore_errors=True)


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
