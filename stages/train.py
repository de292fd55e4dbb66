"""Train one model (named on the command line) and save its checkpoint, metrics and history."""
import sys
from pathlib import Path

import torch

from cnnlab import CnnlabError, params
from cnnlab.models import MODELS
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.train import train_model


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise CnnlabError(f"usage: train.py MODEL, MODEL one of {', '.join(MODELS)}")
    name = sys.argv[1]
    checkpoint, metrics, history, steps = train_model(name, params.load(), Path("data/prepared"))
    with staged_outputs() as out:
        torch.save(checkpoint, out.path(f"models/{name}.pt"))
        out.json(f"metrics/train/{name}.json", metrics)
        out.csv(f"plots/train/{name}.csv", history)
        out.csv(f"plots/steps/{name}.csv", steps)
    print(f"train: {name} best epoch {metrics['best_epoch']}/{metrics['epochs_run']}, "
          f"val acc {metrics['val_accuracy']:.4f}, {metrics['train_seconds']:.1f} s, "
          f"{metrics['images_per_second']:.0f} images/s")


if __name__ == "__main__":
    run_stage(main)
