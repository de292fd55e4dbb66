"""Train one model (named on the command line) and save its checkpoint, metrics and history.
Each epoch's numbers are also logged live with dvclive to dvclive/<model>/ while training runs.

With train.nproc > 1 (or CNNLAB_TORCHRUN set, for several nodes) this script runs itself again
under torchrun, one process per rank, and waits; rank 0 logs and writes the outputs."""
import sys
from contextlib import nullcontext
from pathlib import Path

from cnnlab.plumbing import stage, torchrun  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from dvclive import Live
from PIL import Image
from cnnlab.config.params import train_config
from cnnlab.results import write_result
from cnnlab.train import parallel
from cnnlab.train.main import train_model

LIVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def main():
    name = params.model_argument("train")
    stage_params = params.for_stage("train", name)
    if not torchrun.under_torchrun():  # first, what will be trained and where each value came from
        print(params.describe_recipe(stage_params, name), flush=True)
    nproc = train_config(stage_params, name)["nproc"]
    if torchrun.needs_launch(nproc):
        torchrun.launch(nproc, sys.argv, f"train {name}")
        return  # rank 0 wrote the outputs; launch put them in place
    lead = parallel.is_lead()
    resume = Path(paths.RESUME.format(model=name))
    with Live(dir=paths.LIVE.format(model=name), save_dvc_exp=False, dvcyaml=None, report=None) \
            if lead else nullcontext() as live:
        def log(row: dict | None, watched: dict | None) -> None:
            if watched is not None:  # <kind>/<epoch>.png: a step slider in VS Code and DVC Studio
                for kind, image in watched["images"].items():
                    live.log_image(f"{kind}/{watched['epoch']}.png", Image.fromarray(image.numpy()))
            if row is not None:
                for key in LIVE_KEYS:
                    live.log_metric(key, row[key])
                live.next_step()

        result = train_model(name, stage_params, paths.PREPARED, log if lead else None, resume)
    if not lead:
        return
    with stage.outputs() as out:
        write_result(out, "train", result, name)
    resume.unlink(missing_ok=True)  # the outputs are in place: the snapshots are spent
    m = result.json["metrics"]
    processes = f", {m['processes']} processes" if m["processes"] > 1 else ""
    print(f"train: {name} best epoch {m['best_epoch']}/{m['epochs_run']}, val acc {m['val_accuracy']:.4f}, "
          f"{m['train_seconds']:.1f} s, {m['images_per_second']:.0f} images/s{processes}")


if __name__ == "__main__":
    stage.run(main)
