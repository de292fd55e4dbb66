"""Every number table in README.md and docs/, written from what the pipeline and the benchmarks
committed: never typed. Also writes the params reference (docs/params.md) and the JSON Schema of
params.yaml (params.schema.json) from the validation schema in cnnlab/config/params.py.

    python tools/docs_tables.py          # rewrite the tables in place
    python tools/docs_tables.py --check  # exit 1, naming the file, if any table is stale (a test runs this)

A table lives between `<!-- table: NAME -->` and `<!-- /table -->` in a Markdown file; NAME is one of
TABLES below, or `include: PATH` to copy the tables of a committed benchmark report
(benchmarks/results/*.md, written by the benchmark scripts; `PATH tables=N`: its first N tables), or a
hand-written page outside docs/ that the site shows (CHANGELOG.md). Figures the manual shows are copied
into docs/figures/ (FIGURES), since the site holds only what is inside docs/.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnlab import checks, models  # noqa: E402
from cnnlab.config import paths  # noqa: E402
from cnnlab.datasets import DATASETS  # noqa: E402
from cnnlab.config.params import SCHEMA, read_yaml  # noqa: E402

MARKER = re.compile(r"(<!-- table: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
SCHEMA_FILE = ROOT / "params.schema.json"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def results() -> str:
    """The default pipeline's models, from the committed metrics."""
    with open(ROOT / paths.outputs("report").summary) as stream:
        summary = list(csv.DictReader(stream))
    rows = []
    for row in summary:
        trained = _read_json(ROOT / paths.outputs("train", row["model"]).metrics)
        rows.append([row["model"], f"{int(row['parameters']):,}", f"**{float(row['test_accuracy']):.2%}**",
                     f"{float(row['test_macro_f1']):.4f}", f"{float(row['val_accuracy']):.2%}",
                     f"{trained['best_epoch']} of {trained['epochs_run']}", f"{float(row['train_seconds']):.1f}",
                     f"{float(row['images_per_second']):,.0f}"])
    first, sizes = summary[0], _read_json(ROOT / "metrics" / "data.json")["sizes"]
    caption = (f"\nMeasured on {first['device']} ({first['threads']} threads), torch {first['torch']}, seed "
               f"{first['seed']}, dataset {first['dataset']} ({sizes['train']:,} train, {sizes['val']:,} validation, "
               f"{sizes['test']:,} test images): `metrics/summary.csv` of the committed run.\n")
    return markdown_table(["model", "parameters", "test acc", "test macro F1", "val acc", "best epoch",
                           "train s", "train images/s"], rows) + caption


def explanations() -> str:
    """Attribution methods per model: deletion and insertion AUC, randomisation, verdict."""
    with open(ROOT / paths.outputs("report").summary) as stream:
        names = [row["model"] for row in csv.DictReader(stream)]
    rows = []
    for name in names:
        found = _read_json(ROOT / paths.outputs("analyze", name).metrics)
        with open(ROOT / paths.outputs("analyze", name).tables / "verdicts.csv") as stream:
            said = {row["method"]: row["verdict"] for row in csv.DictReader(stream)}
        for method, n in found.get("explanations", {}).items():
            rows.append([name, method, f"{n['deletion_auc']:.3f}", f"{n['insertion_auc']:.3f}",
                         f"{n['randomized_spearman']:.2f}", said[method]])
    return markdown_table(["model", "method", "deletion AUC", "insertion AUC", "randomised rank corr.", "verdict"], rows)


def embeddings() -> str:
    """Per model: silhouette of its embeddings and of the pixels, accuracy at each noise level."""
    with open(ROOT / paths.outputs("report").summary) as stream:
        names = [row["model"] for row in csv.DictReader(stream)]
    found = {name: _read_json(ROOT / paths.outputs("analyze", name).metrics) for name in names}
    levels = list(next(iter(found.values()))["noise_accuracy"])
    rows = [[name, f"{m['silhouette']:.3f}", f"{m['silhouette_pixels']:.3f}",
             *(f"{m['noise_accuracy'][level]:.2%}" for level in levels)] for name, m in found.items()]
    return markdown_table(["model", "silhouette, embeddings", "silhouette, raw pixels",
                           *(f"acc, noise {level}" for level in levels)], rows)


def studies() -> str:
    """Each original study beside what cnnlab measured on its setup (benchmarks/results/studies.json)."""
    found = _read_json(ROOT / "benchmarks" / "results" / "studies.json")
    rows = [[s["study"], s["reported"], s["cnnlab"], s["time"] + (f" (recorded {s['measured']})" if s["recorded"] else ""),
             f"`{s['command']}`"] for s in found["studies"]]
    return markdown_table(["study", "it reported", "cnnlab measured", "time", "command"], rows) + \
        f"\n{found['measured_on']}\n"


def _allowed(check) -> str:
    """What a checker accepts, in its own words: the message it gives for a value it refuses."""
    if hasattr(check, "allowed"):
        return check.allowed
    try:
        check(object())
    except ValueError as reason:
        return str(reason)
    return "any value"


def _comments() -> dict[str, str]:
    """key path -> the comment beside it in params.yaml (what the key does, in the file's words)."""
    found, stack = {}, []
    for line in (ROOT / "params.yaml").read_text().splitlines():
        match = re.match(r"^( *)([A-Za-z_]+):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)) // 2, match.group(2), match.group(3)
        stack = stack[:indent] + [key]
        if "#" in rest:
            found[".".join(stack)] = rest.split("#", 1)[1].strip()
    return found


def _default(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else \
        str(value).lower() if isinstance(value, bool) else str(value)


def params_reference() -> str:
    raw, said = read_yaml((ROOT / "params.yaml").read_text()), _comments()
    rows = []
    for section, section_checks in SCHEMA.items():
        for key, check in section_checks.items():
            path = f"{section}.{key}"
            allowed = "one of " + ", ".join(DATASETS) if path == "data.dataset" else _allowed(check)
            rows.append([f"`{path}`", allowed.replace("|", "\\|"), f"`{_default(raw[section][key])}`",
                         said.get(path, "").replace("|", "\\|")])
    rows.append(["`models`", _allowed(checks.names(models.names())), f"`{_default(raw['models'])}`",
                 said.get("models", "")])
    table = markdown_table(["key", "allowed", "default", "what it does"], rows)
    per_model = []
    for name in models.names():
        signature = inspect.signature(models.spec(name).build).parameters
        shipped = raw.get(name) or {}
        for option, check in models.options(name).items():
            default = shipped.get(option, signature[option].default)
            per_model.append([f"`{name}.{option}`", _allowed(check), f"`{_default(default)}`",
                              said.get(f"{name}.{option}") or OPTION_TEXT[option]])
    return table + "\nModel options (in the model's own section, beside any `train:` key it overrides):\n\n" + \
        markdown_table(["key", "allowed", "default", "what it does"], per_model)


OPTION_TEXT = {  # what a model option does, where params.yaml has no comment beside it
    "width": "channels of the first stage; later stages have multiples of it",
    "input_size": "each batch is resized to this square size before the first conv",
    "dropout": "the probability that dropout zeroes a unit of the hidden layers",
    "hidden": "units in each of the two hidden layers",
    "stem": "cifar: a 3x3/1 conv, no max-pool (32x32 images); imagenet: a 7x7/2 conv and a max-pool",
    "blocks": "residual blocks per stage (3: ResNet-20, 9: ResNet-56)",
}


def json_schema() -> dict:
    """A JSON Schema of params.yaml (draft 2020-12) for editors: VS Code's YAML extension completes
    and checks keys with it (params.yaml names it in its first line)."""
    said = _comments()

    def described(path: str, check) -> dict:
        return {**getattr(check, "json_schema", {}), "description": said.get(path, _allowed(check))}

    sections = {section: {"type": "object", "additionalProperties": False,
                          "properties": {key: described(f"{section}.{key}", check)
                                         for key, check in section_checks.items()}}
                for section, section_checks in SCHEMA.items()}
    sections["models"] = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(models.names())},
                          "description": said.get("models", "")}
    model_section = {"type": ["object", "null"], "description": "this model's options and any train: key it overrides"}
    for name in models.names():
        own = {key: described(f"{name}.{key}", check) for key, check in models.options(name).items()}
        sections[name] = {**model_section, "properties": {**sections["train"]["properties"], **own},
                          "additionalProperties": False}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "cnnlab params.yaml",
            "type": "object", "additionalProperties": False, "required": [s for s in SCHEMA] + ["models"],
            "properties": sections}


MODEL_TEXT = {  # what each model is built from (its shipped options and section: the other columns, params.md)
    "mlp": "two hidden layers",
    "cnn": "conv16, conv32 (3x3), fc128",
    "cnn_small": "conv8, conv16 (3x3), one linear head: the SGD study's net",
    "lenet": "LeNet-5-like: conv6, conv16 (5x5), fc120, fc84",
    "speedrun": "the fastest public MNIST recipe's net: conv24 5x5, conv32 3x3, fc256; one epoch "
                "(`benchmarks/speedrun.py`)",
    "alexnet": "torchvision's AlexNet; first conv takes the data's channels; n-class head; each batch resized on "
               "the device to `input_size`",
    "resnet18": "torchvision's ResNet18 with the data's channels and classes",
    "airbench": "the CIFAR-10 speed records' net: a 2x2 whitening conv set from the training images (frozen), three "
                "conv groups of `width`, 4x and 4x channels, GELU, norm shifts only; its section sets its own width, "
                "epochs and TTA ([CIFAR-10 on a CPU](performance.md#cifar-10-on-a-cpu))",
    "resnet_small": "the CIFAR ResNet-20 of He et al.: 3 stages of torchvision BasicBlocks at 16, 32, 64 channels",
}


def shipped_options(name: str) -> dict:
    """A model's options as params.yaml ships them (its section, else the constructor's default)."""
    raw, signature = read_yaml((ROOT / "params.yaml").read_text()), inspect.signature(models.spec(name).build).parameters
    shipped = raw.get(name) or {}
    return {option: shipped.get(option, signature[option].default) for option in models.options(name)}


def model_zoo() -> str:
    """Every model: what it is built from, its trainable parameters (counted on the built model, with
    the shipped options) for digits and for colour images, and its options."""
    from cnnlab.engine.checkpoints import count_parameters
    rows = []
    for name in models.names():
        options = shipped_options(name)
        counts = [f"{count_parameters(models.build(name, channels, 10, size, **options)):,}"
                  for channels, size in ((1, 28), (3, 32))]
        rows.append([f"`{name}`", MODEL_TEXT[name], *counts,
                     ", ".join(f"`{option}` ({_default(value)})" for option, value in options.items())])
    return markdown_table(["model", "built from", "parameters, 1x28x28", "parameters, 3x32x32",
                           "options in its section (shipped value)"], rows)


def pipeline_time() -> str:
    """How long the shipped pipeline takes, per stage and for the user's loop (benchmarks/results/pipeline.json)."""
    found = _read_json(ROOT / "benchmarks" / "results" / "pipeline.json")
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    stages = found["runs"][0]["stages"]
    walls = {stage: median([run["stages"][stage]["wall"] for run in found["runs"]]) for stage in stages}
    rows = [[f"`{stage}`", f"{wall:.0f} s"] for stage, wall in walls.items()]
    rows.append(["**`dvc repro -f`, all stages**", f"**{median([run['total'] for run in found['runs']]):.0f} s**"])
    rows += [[f"`{loop['command']}`", f"{median(loop['seconds']):.0f} s"] for loop in found["loop"].values()]
    env = found["env"]
    return markdown_table(["what runs", "seconds (median)"], rows) + \
        (f"\nMeasured on {env['device_name']} ({env['threads']} threads), torch {env['torch']} by "
         f"`python benchmarks/pipeline.py` (benchmarks/results/pipeline.md).\n")


def speedrun() -> str:
    """The speedrun recipe's claim, from its race (benchmarks/results/speedrun.json)."""
    found = _read_json(ROOT / "benchmarks" / "results" / "speedrun.json")
    ours, env = found["summary"]["cnnlab speedrun"], found["env"]
    seeds = len(found["runs"]["cnnlab speedrun"])
    return (f"**Go fast.** `dvc exp run -S 'models=[speedrun]'` trains MNIST to {ours['mean_accuracy']:.2%} test "
            f"accuracy in one epoch, {ours['mean_seconds']:.1f} s of training on {env['device_name']} "
            f"({env['threads']} threads; the mean of {seeds} seeds, `benchmarks/results/speedrun.md`).\n")


def cifar_by_cpu() -> str:
    """One row per committed CIFAR-10 benchmark (benchmarks/results/cifar*.json): the CPU, the
    airbench width and test-time views it ran, its mean test accuracy and minutes, and the verdict."""
    rows = []
    shipped = inspect.signature(models.spec("airbench").build).parameters["width"].default
    for path in sorted((ROOT / "benchmarks" / "results").glob("cifar*.json")):
        found = _read_json(path)
        width = re.search(r"width (\d+)", found["recipe"]) or re.search(r"width(\d+)", path.stem)  # older: in the name
        tta = re.search(r"(?:tta|flip_tta) (\w+) from", found["recipe"])
        rows.append([found["env"]["device_name"], width.group(1) if width else str(shipped),
                     {"True": "flip", "False": "none"}.get(tta.group(1), tta.group(1)) if tta else "none",
                     f"{found['mean_test_accuracy']:.2%}", f"{found['mean_minutes']:.1f}", found["date"],
                     "met" if found["meets_targets"] else "not met", f"`{path.stem}`"])
    return markdown_table(["CPU, 2 threads", "width", "TTA", "test acc.", "minutes", "measured",
                           "90% in 20 min", "benchmarks/results/"], rows)


def gather() -> str:
    """Images/s of the training data path per case (benchmarks/results/gather.json)."""
    found = _read_json(ROOT / "benchmarks" / "results" / "gather.json")
    rows = [[case, f"{v['median_images_per_second']:,}", f"{v['best_images_per_second']:,}"]
            for case, v in found["cases"].items()]
    return (f"Measured on {found['cpu']} ({found['threads']} threads), batch {found['batch_size']}, "
            f"{found['rounds']} rounds; cold: {found['cold_by']}.\n\n"
            + markdown_table(["case", "images/s, median", "best"], rows))


def cifar() -> str:
    """The CIFAR-10 recipe's claim, from its shipped run (benchmarks/results/cifar.json)."""
    found = _read_json(ROOT / "benchmarks" / "results" / "cifar.json")
    return (f"`dvc exp run -S data.dataset=cifar10 -S 'models=[airbench]'` trains CIFAR-10 on a CPU; its recipe "
            f"reaches {found['mean_test_accuracy']:.2%} on a held-out test split in {found['mean_minutes']:.0f} minutes on "
            f"{found['env']['device_name']} ({found['env']['threads']} threads; the mean of {len(found['runs'])} "
            f"seeds; [per CPU](docs/performance.md#cifar-10-on-a-cpu)).\n")


def epochs_of_their_own() -> str:
    """The sections of params.yaml that set their own epochs, so `-S train.epochs=N` does not reach them."""
    raw = read_yaml((ROOT / "params.yaml").read_text())
    own = [f"`{name}` ({raw[name]['epochs']})" for name in models.names()
           if isinstance(raw.get(name), dict) and "epochs" in raw[name]]
    return "Sections that set their own `epochs` (so `-S train.epochs=N` does not reach them; use " \
        "`-S <model>.epochs=N`): " + ", ".join(own) + ".\n"


def cuda() -> str:
    """The CUDA that the pinned torch wheels are built for, from requirements.lock."""
    pins = dict(re.findall(r"(?m)^([\w.-]+)==([^ ;\n]+)", (ROOT / "requirements.lock").read_text()))
    toolkit = ".".join(pins["cuda-toolkit"].split(".")[:2])
    return (f"`requirements.lock` pins torch {pins['torch']} with CUDA {toolkit} (`cuda-toolkit` "
            f"{pins['cuda-toolkit']}) and cuDNN {pins['nvidia-cudnn-cu13'].split('.')[0]} on Linux.\n")


TABLES = {"results": results, "models": model_zoo, "cuda": cuda, "pipeline-time": pipeline_time, "speedrun": speedrun, "cifar-by-cpu": cifar_by_cpu, "cifar": cifar, "gather": gather, "epochs-of-their-own": epochs_of_their_own,
          "embeddings": embeddings, "explanations": explanations, "studies": studies,
          "params": params_reference}


def include(spec: str) -> str:
    """The tables (and their captions) of a committed benchmark report, without its title;
    `PATH tables=N`: up to the end of its N-th table only."""
    path, _, first = spec.partition(" tables=")
    text = re.sub(r"^# .*\n\n?", "", (ROOT / path).read_text(), count=1)
    if first:
        tables = list(re.finditer(r"(?m)(^\|.*\n)+", text))
        text = text[:tables[int(first) - 1].end()]
    return re.sub(r"<!-- /?table(: [^>]*)? -->\n", "", text)  # an included page's own tables, as rendered


def render(text: str) -> str:
    def fill(match):
        name = match.group("name").strip()
        body = include(name.split(":", 1)[1].strip()) if name.startswith("include:") else TABLES[name]()
        return f"{match.group(1)}{body}{match.group(4)}"
    return MARKER.sub(fill, text)


def documents() -> list[Path]:
    return [ROOT / "CHANGELOG.md", ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


FIGURES = {"docs/figures/curves.png": "report/curves.png",  # the site shows only what is inside docs/
           "docs/figures/lenet-explanations.png": "plots/analysis/lenet/explanations.png"}


def watch_figures() -> dict[str, str]:
    """LeNet as it learned (docs/watch.md): its pictures before training, after epoch 1 and after the last."""
    folder = ROOT / paths.outputs("train", "lenet").watch
    last = max(int(p.stem) for p in (folder / "attributions").glob("*.png"))
    return {f"docs/figures/watch-lenet-{kind}-{when}.png": str(folder.relative_to(ROOT) / kind / f"{step}.png")
            for kind in ("filters", "feature_maps", "attributions") for when, step in (("first", 0), ("early", 1),
                                                                                        ("last", last))}


def stale_figures(check: bool) -> list[str]:
    """Copies of committed figures the manual shows, refreshed unless checking."""
    stale = []
    for copy, source in {**FIGURES, **watch_figures()}.items():
        if not (ROOT / copy).exists() or (ROOT / copy).read_bytes() != (ROOT / source).read_bytes():
            stale.append(copy)
            if not check:
                (ROOT / copy).parent.mkdir(exist_ok=True)
                (ROOT / copy).write_bytes((ROOT / source).read_bytes())
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a table is stale; change nothing")
    check = parser.parse_args().check
    stale = []
    for path in documents():
        text = path.read_text()
        fresh = render(text)
        if fresh != text:
            stale.append(path.relative_to(ROOT))
            if not check:
                path.write_text(fresh)
    schema = json.dumps(json_schema(), indent=2) + "\n"
    if not SCHEMA_FILE.exists() or SCHEMA_FILE.read_text() != schema:
        stale.append(SCHEMA_FILE.relative_to(ROOT))
        if not check:
            SCHEMA_FILE.write_text(schema)
    stale += stale_figures(check)
    if stale and check:
        print(f"stale: {', '.join(map(str, stale))}; run python tools/docs_tables.py", file=sys.stderr)
        return 1
    print(("rewrote: " + ", ".join(map(str, stale))) if stale else "every table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
