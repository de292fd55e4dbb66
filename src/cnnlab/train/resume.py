"""Resuming an interrupted fit: after every epoch, a snapshot of everything the fit depends on, so
that a killed fit continues from its last finished epoch and ends with the same weights as one that
was never interrupted. A snapshot is used only if its fingerprint (the training params, the prepared
data and cnnlab's code) matches; it lives outside the pipeline's outputs and is removed once the
train stage's outputs are in place."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import cnnlab
from cnnlab import CnnlabError
from cnnlab.plumbing.outputs import write_atomically
from cnnlab.train.history import new_record


class Resume:
    def __init__(self, path: str | Path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint

    def save(self, state: dict, record: dict) -> None:
        """state: the model, optimizer, scheduler, scaler and stopper (each saved by its state_dict)
        and the random generators; record: the history so far."""
        snapshot = {name: part.state_dict() for name, part in state.items() if name != "generators"}
        snapshot.update(generators=[g.get_state() if g is not None else None for g in state["generators"]],
                        torch_rng=torch.get_rng_state(),
                        cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        record=record, fingerprint=self.fingerprint)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, lambda path: torch.save(snapshot, path))
        except (OSError, RuntimeError) as err:  # torch.save on a full disk: "PytorchStreamWriter failed ..."
            full = ("PytorchStreamWriter", "unexpected pos")
            if isinstance(err, RuntimeError) and not any(words in str(err) for words in full):
                raise
            cause = (err.strerror if isinstance(err, OSError) else None) or "could not be written (is the disk full?)"
            raise CnnlabError(f"{self.path}: {cause} (the resume snapshot saved after each epoch); free some space "
                              f"and rerun, or set train.resume: false to train without snapshots") from None

    def load(self, state: dict, label: str) -> dict:
        """Restore the last snapshot into `state`; return its record (a new one without a snapshot)."""
        saved = self._read()
        if saved is None:
            return new_record()
        for name, part in state.items():
            if name != "generators":
                part.load_state_dict(saved[name])
        for generator, generator_state in zip(state["generators"], saved["generators"]):
            if generator is not None:
                generator.set_state(generator_state)
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        print(f"{label}: resuming after epoch {len(saved['record']['history'])} (train.resume)", flush=True)
        return saved["record"]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a snapshot cut short by a kill, or an old format: start afresh
            return None
        return saved if isinstance(saved, dict) and saved.get("fingerprint") == self.fingerprint else None


def fingerprint(name: str, cfg: dict, options: dict, prepared_dir: Path) -> str:
    """What a snapshot must match: the training params (display options aside), the prepared data's
    description and sizes, and cnnlab's own code."""
    digest = hashlib.sha256(json.dumps({"model": name, "options": options, "train": {
        k: v for k, v in cfg.items() if k not in ("progress", "resume")}}, sort_keys=True).encode())
    digest.update((Path(prepared_dir) / "info.json").read_bytes())
    for split in ("train_images.npy", "train_labels.npy", "val_images.npy", "val_labels.npy"):
        digest.update(str((Path(prepared_dir) / split).stat().st_size).encode())
    for source in sorted(Path(cnnlab.__file__).parent.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()
