"""Train one model (named on the command line) and save its checkpoint, metrics and history.
Each epoch's numbers are also logged live with dvclive to dvclive/<model>/ while training runs.

With train.nproc > 1 (or CNNLAB_TORCHRUN set, for several nodes) this script runs itself again
under torchrun, one process per rank, and waits; rank 0 logs and writes the outputs."""
import sys
from contextlib import nullcontext

import torch
from dvclive import Live

from cnnlab import distributed, params, paths
from cnnlab.outputs import model_argument, run_stage, staged_outputs
from cnnlab.params import train_config
from cnnlab.train import train_model

LIVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def main():
    name = model_argument("train")
    stage_params = params.for_stage("train", name)
    nproc = train_config(stage_params, name)["nproc"]
    if distributed.needs_launch(nproc):
        distributed.launch(nproc, sys.argv, f"train {name}")
        return  # rank 0 wrote the outputs; launch put them in place
    lead = distributed.rank() == 0
    target = paths.outputs("train", name)
    live_dir = paths.LIVE.format(model=name)
    with Live(dir=live_dir, save_dvc_exp=False, dvcyaml=None, report=None) if lead else nullcontext() as live:
        def log(record: dict) -> None:
            for key in LIVE_KEYS:
                live.log_metric(key, record[key])
            live.next_step()

        checkpoint, metrics, history, steps = train_model(name, stage_params, paths.PREPARED,
                                                          log if lead else None, target.resume)
    if not lead:
        return
    with staged_outputs() as out:
        torch.save(checkpoint, out.path(target.checkpoint))
        out.json(target.metrics, metrics)
        out.csv(target.history, history)
        out.csv(target.steps, steps)
        # with the outputs in place the snapshots are spent (a small marker keeps the declared output)
        torch.save({"finished": True}, out.path(target.resume))
    processes = f", {metrics['processes']} processes" if metrics["processes"] > 1 else ""
    print(f"train: {name} best epoch {metrics['best_epoch']}/{metrics['epochs_run']}, "
          f"val acc {metrics['val_accuracy']:.4f}, {metrics['train_seconds']:.1f} s, "
          f"{metrics['images_per_second']:.0f} images/s{processes}")


if __name__ == "__main__":
    run_stage(main)
