"""Assemble the report, and gather every model's results into the files DVC shows: metrics for
`dvc exp show`, one CSV per chart for `dvc plots`, the figures compared across runs."""
import shutil

from cnnlab.plumbing import stage  # first: the plumbing notes the parent process
from cnnlab.config import params, paths
from cnnlab.plumbing.outputs import write_csv
from cnnlab.figures import comparison_figure, curves_figure
from cnnlab.report import collect, collect_analysis, comparison, figure_data, markdown, read_data_summary


def main():
    loaded = params.for_stage("report")
    models = loaded["models"]
    summary, histories, watched, per_class = collect(models)
    analysis = collect_analysis(models)
    compared = comparison(summary, histories, watched, analysis)
    target, dpi = paths.outputs("report"), loaded["report"]["dpi"]
    with stage.outputs() as out:
        out.csv(target.summary, summary.to_dict("records"))
        out.json(target.scores, compared["scores"])
        model_scores = out.path(target.model_scores)  # a folder, replaced whole: only these models
        model_scores.mkdir()
        for name, numbers in compared["model_scores"].items():
            out.json(model_scores / f"{name}.json", numbers, staged=False)
        out.csv(target.epochs, compared["epochs"])
        out.csv(target.steps, compared["steps"])
        out.csv(target.confusion, compared["confusion"])
        tables = out.path(target.tables)  # one file per plotted analysis table, every model in it
        tables.mkdir()
        for name, rows in compared["tables"].items():
            write_csv(tables / f"{name}.csv", rows)
        out.csv(target.watch_curves, compared["watch_curves"])
        watch = out.path(target.watch)
        watch.mkdir()
        for name, folder in compared["watch"].items():
            shutil.copytree(folder, watch / name)
        figures = out.path(target.figures)
        figures.mkdir()
        for name, source in compared["figures"].items():
            shutil.copyfile(source, figures / name)
        drawing = figure_data(histories, analysis)  # a figure whose data is unchanged is kept, not redrawn
        out.figure_of(target.curves, curves_figure, drawing.pop("curves"), dpi=dpi)
        report_figures = out.path(target.report_figures)
        report_figures.mkdir()
        for name, data in drawing.items():
            out.figure_of(target.report_figures / f"{name}.png", comparison_figure, data, dpi=dpi,
                          inside=report_figures / f"{name}.png")
        out.text(target.markdown, markdown(loaded["report"]["title"], summary, per_class, watched, analysis,
                                           read_data_summary()))
    print("report: " + ", ".join(f"{r.model} {r.test_accuracy:.4f}" for r in summary.itertuples()))


if __name__ == "__main__":
    stage.run(main)
