"""The analyze stage's work for one model: its checkpoint and test images, looked at by every analysis
of cnnlab/analyses/ (one file each), their figures, tables, numbers and report sections by output role."""

from __future__ import annotations

from pathlib import Path

from cnnlab import analyses, explain, models
from cnnlab.engine.batches import DeviceBudget, DeviceSplit
from cnnlab.engine.checkpoints import load_checkpoint, tta_of
from cnnlab.engine.inference import autocast_dtype, memory_format_for
from cnnlab.prepare import load_prepared, one_per_class
from cnnlab.results import Result
from cnnlab.runtime import check_memory, pick_device


def analyze_model(name: str, checkpoint_path: Path, prepared_dir: Path, options: dict,
                  max_device_bytes: int | None = None) -> Result:
    device = pick_device("auto")
    model, ckpt = load_checkpoint(checkpoint_path, device, expected=name)
    data = load_prepared(prepared_dir, ("test",))
    labels = data["test"][1]
    check_explanations_fit(name, model, tuple(data["test"][0].shape[1:]), min(options["explain_samples"], len(labels)),
                           options, device)
    samples = one_per_class(labels, options["samples_per_class"], len(ckpt["classes"]), options["seed"])
    test = DeviceSplit(*data["test"], ckpt["mean"], ckpt["std"], device, memory_format_for(model),
                       budget=DeviceBudget(device, max_device_bytes))
    subject = analyses.Subject(name, model, models.spec(name), ckpt["classes"], test, labels, options,
                               autocast_dtype(ckpt.get("precision", "fp32"), device), tta_of(ckpt),
                               samples, [ckpt["classes"][int(labels[i])] for i in samples])
    return analyses.run_all(subject)


def check_explanations_fit(name: str, model, image_shape: tuple[int, int, int], images: int, options: dict,
                           device) -> None:
    """Refuse up front, in one line naming analyze.explain_samples, explanations whose estimated peak
    (explain.peak_bytes) does not fit in free memory or under the process's address-space limit."""
    spec = models.spec(name)
    methods = len(explain.methods(spec.path(spec.attribution_layer), options["seed"]))
    needed = explain.peak_bytes(model, image_shape, images, methods)
    what = (f"params.yaml: analyze.explain_samples {options['explain_samples']} (scoring {methods} attribution methods "
            f"on {images:,} test images of {'x'.join(map(str, image_shape))} with {name})")
    check_memory(needed, what, device, fix="lower analyze.explain_samples")
