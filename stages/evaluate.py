"""Evaluate one trained model on the test set: metrics, per-class scores, confusion matrix."""
from cnnlab.plumbing import stage  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from cnnlab.evaluate import evaluate_model
from cnnlab.results import write_result


def main():
    name = params.model_argument("evaluate")
    loaded = params.for_stage("evaluate", name)
    result = evaluate_model(name, paths.outputs("train", name).checkpoint, paths.PREPARED,
                            loaded["evaluate"]["batch_size"], loaded["data"]["max_device_bytes"])
    with stage.outputs() as out:
        write_result(out, "evaluate", result, name)
    m = result.json["metrics"]
    print(f"evaluate: {name} test accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}")


if __name__ == "__main__":
    stage.run(main)
