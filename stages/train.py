"""Train one model (named on the command line) and save its checkpoint, metrics and history.
Each epoch's numbers are also logged live with dvclive to dvclive/<model>/ while training runs."""
import torch
from dvclive import Live

from cnnlab import params, paths
from cnnlab.outputs import model_argument, run_stage, staged_outputs, write_atomically
from cnnlab.train import train_model

LIVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


def main():
    name = model_argument("train")
    with Live(dir=paths.LIVE.format(model=name), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        def log(record: dict) -> None:
            for key in LIVE_KEYS:
                live.log_metric(key, record[key])
            live.next_step()

        target = paths.outputs("train", name)
        checkpoint, metrics, history, steps = train_model(name, params.for_stage("train", name), paths.PREPARED,
                                                          log, target.resume)
    with staged_outputs() as out:
        torch.save(checkpoint, out.path(target.checkpoint))
        out.json(target.metrics, metrics)
        out.csv(target.history, history)
        out.csv(target.steps, steps)
    # the outputs are in place: the snapshots are spent (a small marker keeps the declared output)
    write_atomically(target.resume, lambda path: torch.save({"finished": True}, path))
    print(f"train: {name} best epoch {metrics['best_epoch']}/{metrics['epochs_run']}, "
          f"val acc {metrics['val_accuracy']:.4f}, {metrics['train_seconds']:.1f} s, "
          f"{metrics['images_per_second']:.0f} images/s")


if __name__ == "__main__":
    run_stage(main)
