"""Assemble report/README.md and metrics/summary.csv from every model's outputs."""
from cnnlab import params
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.report import collect, collect_analysis, curves_figure, markdown, noise_figure, read_data_summary


def main():
    loaded = params.load()
    summary, histories, per_class = collect(loaded["models"])
    analysis = collect_analysis(loaded["models"])
    data = read_data_summary()
    with staged_outputs() as out:
        out.csv("metrics/summary.csv", summary.to_dict("records"))
        out.figure("report/curves.png", curves_figure(histories), dpi=loaded["report"]["dpi"])
        out.figure("report/noise.png", noise_figure(analysis), dpi=loaded["report"]["dpi"])
        out.text("report/README.md", markdown(loaded["report"]["title"], summary, per_class, analysis, data))
    print("report: " + ", ".join(f"{r.model} {r.test_accuracy:.4f}" for r in summary.itertuples()))


if __name__ == "__main__":
    run_stage(main)
