"""Train one model (named on the command line) and save its checkpoint, metrics and history."""
import torch

from cnnlab import params, paths
from cnnlab.outputs import model_argument, run_stage, staged_outputs
from cnnlab.train import train_model


def main():
    name = model_argument("train")
    checkpoint, metrics, history, steps = train_model(name, params.for_stage("train", name), paths.PREPARED)
    target = paths.outputs("train", name)
    with staged_outputs() as out:
        torch.save(checkpoint, out.path(target.checkpoint))
        out.json(target.metrics, metrics)
        out.csv(target.history, history)
        out.csv(target.steps, steps)
    print(f"train: {name} best epoch {metrics['best_epoch']}/{metrics['epochs_run']}, "
          f"val acc {metrics['val_accuracy']:.4f}, {metrics['train_seconds']:.1f} s, "
          f"{metrics['images_per_second']:.0f} images/s")


if __name__ == "__main__":
    run_stage(main)
