"""Assemble report/README.md and metrics/summary.csv from every model's outputs."""
from cnnlab import params
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.report import collect, curves_figure, markdown


def main():
    loaded = params.load()
    summary, histories, per_class = collect(loaded["models"])
    with staged_outputs() as out:
        out.csv("metrics/summary.csv", summary.to_dict("records"))
        out.figure("report/curves.png", curves_figure(histories), dpi=loaded["report"]["dpi"])
        out.text("report/README.md", markdown(loaded["report"]["title"], summary, per_class))
    print("report: " + ", ".join(f"{r.model} {r.test_accuracy:.4f}" for r in summary.itertuples()))


if __name__ == "__main__":
    run_stage(main)
