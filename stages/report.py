"""Assemble report/README.md and metrics/summary.csv from every model's outputs."""
from cnnlab import params, paths
from cnnlab.figures import curves_figure, noise_figure
from cnnlab.outputs import run_stage, staged_outputs
from cnnlab.report import collect, collect_analysis, markdown, read_data_summary


def main():
    loaded = params.for_stage("report")
    summary, histories, per_class = collect(loaded["models"])
    analysis = collect_analysis(loaded["models"])
    data = read_data_summary()
    target, dpi = paths.outputs("report"), loaded["report"]["dpi"]
    with staged_outputs() as out:
        out.csv(target.summary, summary.to_dict("records"))
        out.figure(target.curves, curves_figure(histories), dpi=dpi)
        out.figure(target.noise, noise_figure(analysis), dpi=dpi)
        out.text(target.markdown, markdown(loaded["report"]["title"], summary, per_class, analysis, data))
    print("report: " + ", ".join(f"{r.model} {r.test_accuracy:.4f}" for r in summary.itertuples()))


if __name__ == "__main__":
    run_stage(main)
