"""Evaluate one trained model on the test set: metrics, per-class scores, confusion matrix."""
from cnnlab import params, paths
from cnnlab.evaluate import evaluate_model
from cnnlab.outputs import model_argument, run_stage, staged_outputs


def main():
    name = model_argument("evaluate")
    stage = params.for_stage("evaluate", name)
    result = evaluate_model(name, paths.outputs("train", name).checkpoint, paths.PREPARED,
                            stage["evaluate"]["batch_size"], stage["data"]["max_device_bytes"])
    target = paths.outputs("evaluate", name)
    with staged_outputs() as out:
        out.json(target.metrics, result["metrics"])
        out.csv(target.per_class, result["per_class"])
        out.csv(target.confusion, result["confusion"])
        out.figure(target.confusion_figure, result["figure"])
    m = result["metrics"]
    print(f"evaluate: {name} test accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}")


if __name__ == "__main__":
    run_stage(main)
