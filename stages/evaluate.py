"""Evaluate one trained model on the test set: metrics, per-class scores, confusion matrix."""
import sys
from pathlib import Path

from cnnlab import CnnlabError, params
from cnnlab.evaluate import evaluate_model
from cnnlab.models import MODELS
from cnnlab.outputs import run_stage, staged_outputs


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise CnnlabError(f"usage: evaluate.py MODEL, MODEL one of {', '.join(MODELS)}")
    name = sys.argv[1]
    options = params.load()["evaluate"]
    result = evaluate_model(name, Path(f"models/{name}.pt"), Path("data/prepared"), options["batch_size"])
    with staged_outputs() as out:
        out.json(f"metrics/test/{name}.json", result["metrics"])
        out.csv(f"metrics/per_class/{name}.csv", result["per_class"])
        out.csv(f"plots/confusion/{name}.csv", result["pairs"])
        out.figure(f"plots/evaluate/{name}_confusion.png", result["figure"])
    m = result["metrics"]
    print(f"evaluate: {name} test accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}")


if __name__ == "__main__":
    run_stage(main)
