"""The `thawing` command line. The only module that prints; everything else logs.

User errors (`ThawingError`) print one clear message and exit with code 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console

from thawing import distributed
from thawing.errors import InputError, Interrupted, StoppedAtOnce, ThawingError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multi-task fine-tuning of sentence encoders.",
)
console = Console(stderr=True)
_MODEL_HELP = "A run directory (or its final/ folder), or the Hugging Face repo id of a pushed model."
_TRUST_HELP = "Run the encoder's own modeling code (a run trained with model.trust_remote_code: true)."
_NO_VERIFY_HELP = ("Load a model whose final/ has no manifest.json, unchecked (every thawing writes one; without it a "
                   "changed file or a reordered label list goes unnoticed).")


def _print_version(value: bool) -> None:
    if value:
        from thawing import version

        print(f"thawing {version()}")
        raise typer.Exit()


@app.callback()
def _setup(
    ctx: typer.Context,
    version: bool = typer.Option(  # noqa: ARG001 (typer calls _print_version with it)
        False, "--version", callback=_print_version, is_eager=True, help="Print thawing's version and exit."
    ),
) -> None:
    """Multi-task fine-tuning of sentence encoders."""
    if distributed.world_size() > 1 and ctx.invoked_subcommand != "train":
        # Every process would run the whole command and write the same output: only training is shared out.
        raise InputError(f"`thawing {ctx.invoked_subcommand}` runs in one process; of the commands only `thawing "
                         "train` runs under accelerate launch or torchrun")
    # thawing shows its own progress; weight-loading and download bars are noise. This runs before every command,
    # `--help` included, so it must not import transformers (seconds): the variable is read when huggingface_hub
    # is first imported, and transformers follows it (`disable_progress_bar()` does both, once they are loaded).
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _check_output(path: Path, overwrite: bool, inputs: tuple = ()) -> None:
    """Fail before any work if `path` cannot be written, so no work is wasted and nothing half-written: never one of
    the command's `inputs` (or inside one), never an existing file without `overwrite` (store/outputs.py)."""
    from thawing.store.outputs import check_output

    check_output(path, list(inputs), overwrite)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write output: folder '{parent}' does not exist", path=path)
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write output: folder '{parent}' is not writable", path=path)


@app.command()
def embed(
    model: str = typer.Option(..., "--model", "-m", help="Model directory or hub id."),
    input: Path = typer.Option(..., "--input", "-i", help="Texts: .txt (one per line), .jsonl, .csv or .tsv."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the (N, D) float32 .npy array."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl/.csv/.tsv input."),
    prompt: str | None = typer.Option(None, help="Instruction prefix added to every text."),
    batch_size: int = typer.Option(32, min=1, help="Texts per forward pass."),
    max_tokens: int | None = typer.Option(
        None,
        min=1,
        help="Fill each batch to this many padded tokens instead of --batch-size texts [default: 16384 on a GPU].",
    ),
    max_length: int | None = typer.Option(None, min=1, help="Truncate texts to this many tokens."),
    device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda or mps."),
    packing: bool | None = typer.Option(
        None, help="Run texts without padding [default: on a GPU in bf16/fp16, flash varlen attention; off on CPU]."
    ),
    mixed_precision: str = typer.Option("auto", help="auto (bf16 on a GPU that has it), no, bf16 or fp16."),
    trust_remote_code: bool = typer.Option(False, help="Run the model's own modeling code (stella needs it)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Embed texts with a sentence encoder and save them as a .npy array."""
    _check_output(output, overwrite, (input, model))  # before the model stack is imported: a refusal comes at once
    import numpy as np

    from thawing.data.readers import read_texts
    from thawing.model.loading import load_encoder
    from thawing.model.runtime import apply, resolve
    from thawing.store.atomic import atomic_path

    texts = read_texts(input, text_field=text_field)
    encoder = load_encoder(model, max_length=max_length, trust_remote_code=trust_remote_code)

    def sample():
        batch = encoder.pad(encoder.token_ids(texts[:32], prompt))
        return batch["input_ids"], batch["attention_mask"]

    runtime = resolve(
        encoder, device=device, precision=mixed_precision, packing_=packing, training=False, sample=sample
    )
    apply(runtime, encoder)
    with runtime.autocast():
        vectors = encoder.encode(
            texts,
            batch_size=batch_size,
            prompt=prompt,
            max_tokens=max_tokens or runtime.inference_max_tokens,
            show_progress=sys.stderr.isatty() and len(texts) > 256,
        )
    try:
        with atomic_path(output) as tmp, open(tmp, "wb") as fh:
            np.save(fh, vectors)
    except OSError as exc:
        raise InputError(f"cannot write output: {exc.strerror}", path=output) from exc
    console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {output}")


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="YAML config."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=2 (repeatable)."),
    run_dir: Path | None = typer.Option(None, help="Write the run here instead of runs/<name>-<timestamp>."),
    full: bool = typer.Option(False, "--full", help="Also run stages marked optional (full fine-tuning)."),
    resume: Path | None = typer.Option(
        None, help="Continue this stopped run from its last checkpoint (inside a stage, too), with its own config."),
    allow_config_change: list[str] = typer.Option(
        [], "--allow-config-change", help="With --resume: a key of config.yaml changed on purpose since the run "
        "started (train.log_every, train.report_to, train.checkpoint_every, train.keep_checkpoints, cache.dir)."),
) -> None:
    """Train a multi-task model (or --resume a stopped run); prints the run directory on its last line."""
    from thawing.config import load_config
    from thawing.progress import ProgressPrinter
    from thawing.reporting.report import report_finished
    from thawing.store.run_dir import RunDir
    from thawing.training.loop import resume_run
    from thawing.training.loop import train as run_training

    if (config is None) == (resume is None):
        raise InputError("give a CONFIG to train, or --resume RUN_DIR to continue a stopped run (not both)")
    if resume is not None and (set_ or run_dir or full):
        raise InputError("--resume continues a run as it was configured: --set, --run-dir and --full do not apply")
    if allow_config_change and resume is None:
        raise InputError("--allow-config-change applies to --resume")
    main = distributed.is_main()  # under `accelerate launch` / `torchrun`: only rank 0 prints and logs
    if not main:
        logging.getLogger().setLevel(logging.ERROR)
    printer = ProgressPrinter(console) if main else None
    try:
        if resume is not None:
            run = resume_run(resume, callbacks=[printer] if printer else (), allow_config_change=allow_config_change)
        else:
            cfg = load_config(config, set_)
            if main:  # before the data and the model load, not after (the main process makes the directory)
                RunDir.check_creatable(run_dir)
            run = run_training(
                cfg, run_dir=str(run_dir) if run_dir else None, callbacks=[printer] if printer else (),
                run_optional=full or None
            )
    except StoppedAtOnce as exc:  # a KeyboardInterrupt, which typer turns into exit 130 without a word
        raise Interrupted(exc.message, signal.SIGINT) from None
    finally:
        if printer is not None:
            printer.stop()
    if main:
        report_finished(run.path)
        print(run.path)


@app.command()
def plan(
    config: Path = typer.Argument(..., help="YAML config."),
    set_: list[str] = typer.Option([], "--set", help="Override a key (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    full: bool = typer.Option(False, "--full", help="Include optional stages."),
) -> None:
    """Show each stage's trainable groups, parameter counts and learning rates, without training (the model's
    architecture is read from its config: no weights are loaded)."""
    import json

    from rich.table import Table

    from thawing.config import load_config
    from thawing.config.tasks import load_tasks
    from thawing.model.groups import parameter_groups
    from thawing.model.loading import load_encoder
    from thawing.training.setup import build_model
    from thawing.training.stages import build_plan, plan_summary

    cfg = load_config(config, set_)
    encoder = load_encoder(cfg.model.name, max_length=cfg.model.max_length, pooling=cfg.model.pooling,
                           normalize=cfg.model.normalize, trust_remote_code=cfg.model.trust_remote_code, weights=False)
    model = build_model(cfg, load_tasks(cfg.tasks, seed=cfg.train.seed, small=cfg.train.small_data), encoder)
    groups = parameter_groups(model)
    summary = plan_summary(build_plan(cfg, groups, full or None, model), groups)
    if as_json:
        print(json.dumps(summary, indent=2, allow_nan=False))
        return
    for stage in summary["stages"]:
        table = Table(
            title=f"stage '{stage['name']}': {stage['epochs']} epochs"
            + (f" (plateau: {stage['patience']} evaluations)" if stage["patience"] else "")
            + f", {stage['trainable_params']:,} trainable parameters",
            title_justify="left",
        )
        for col in ("group", "params", "lr"):
            table.add_column(col, justify="left" if col == "group" else "right")
        for g in stage["groups"]:
            table.add_row(g["name"], f"{g['params']:,}", f"{g['lr']:.2e}")
        if stage.get("retain"):
            table.caption = "retain: " + ", ".join(f"{k} {v}" for k, v in stage["retain"].items())
        Console().print(table)
        if "lora" in stage:
            Console().print(_lora_line(stage["lora"]))
        if "skips" in stage:
            Console().print(f"skips {', '.join(stage['skips'])}: no head, and this stage trains neither the encoder "
                            "nor a projection")


def _lora_line(adapters: dict) -> str:
    """One line on a stage's LoRA adapters, for `thawing plan`."""
    layers = adapters["layers"]
    where = layers[0] if len(layers) == 1 else f"{layers[0]} to {layers[-1]}"
    return (f"LoRA r={adapters['r']}, alpha {adapters['alpha']:g}, dropout {adapters['dropout']:g}: "
            f"{', '.join(adapters['modules'])} in {where}, {adapters['params']:,} adapter parameters "
            "(merged into the encoder when the stage ends)")


@app.command()
def evaluate(
    run_dir: str = typer.Argument(..., help="A run directory, or the Hugging Face repo id of a pushed model (with "
                                  "--data for each task: it has no run config)."),
    split: str = typer.Option("test", help="Split to evaluate: train, dev or test."),
    data: list[str] = typer.Option(
        [], "--data", help="Evaluate a task on another file: --data task=path (repeatable)."
    ),
    output: Path | None = typer.Option(None, help="Also write the metrics to this JSON file."),
    trust_remote_code: bool = typer.Option(False, help=_TRUST_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
) -> None:
    """Evaluate a trained run on a split of its tasks' data, or on other files."""
    if output is not None:  # before the model stack is imported (seconds): a refusal comes at once
        _check_output(output, overwrite=False, inputs=(run_dir,))
    import json

    from thawing.api import load
    from thawing.config import SPLITS, load_config
    from thawing.model.hub import model_folder
    from thawing.model.inference import file_examples, split_examples
    from thawing.progress import metrics_table
    from thawing.store.run_dir import RunDir

    if split not in SPLITS:
        raise InputError(f"--split '{split}' is not a split; choose {', '.join(SPLITS)}")
    overrides = dict(_split_pair(item) for item in data)
    folder = model_folder(run_dir)
    run = RunDir.of_model(folder)
    # A model without its run (a Hugging Face download) has no config.yaml: nothing names its data or their fields.
    cfg = None if run.stands_alone() else load_config(run.config)
    if cfg is None and not overrides:
        raise InputError(f"'{run_dir}' has no run config (config.yaml) to find its data in: give --data task=FILE "
                         "for the tasks to evaluate (fields: text and label, or tokens and tags)")
    model = load(str(folder), trust_remote_code=trust_remote_code, verify=not no_verify)
    unknown = set(overrides) - set(model.tasks)
    if unknown:
        raise InputError(f"--data names unknown task(s) {', '.join(sorted(unknown))}; tasks: {', '.join(model.tasks)}")
    results = {}
    for task, spec in model.tasks.items():
        if cfg is None:
            examples = file_examples(spec, split, overrides[task]) if task in overrides else None
        else:
            examples = split_examples(cfg, task, spec.labels, split, overrides.get(task))
        if not examples:
            console.print(f"task '{task}' has no {split} split; skipped (give --data {task}=FILE)", markup=False)
            continue
        results[task] = model.evaluate_examples(task, examples)
    Console().print(metrics_table(f"{run_dir} ({split})", results))
    if output is not None:
        from thawing.store.atomic import write_text

        write_text(output, json.dumps({"split": split, "tasks": results}, indent=2, allow_nan=False) + "\n")


def _split_pair(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise InputError(f"--data '{item}' must look like task=path")
    task, path = item.split("=", 1)
    return task, path


@app.command()
def predict(
    run_dir: str = typer.Argument(..., help=_MODEL_HELP),
    input: Path = typer.Option(..., "--input", "-i", help="Texts: .txt (one per line), .jsonl, .csv or .tsv."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write one JSON line per input."),
    task: str | None = typer.Option(None, help="Only this task (default: every task)."),
    text_field: str = typer.Option("text", help="Field holding the text in .jsonl/.csv/.tsv input."),
    pair_fields: str | None = typer.Option(
        None, help="Pair tasks: the two fields of each input row (default: sentence1,sentence2; retrieval: "
        "query,passage)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    trust_remote_code: bool = typer.Option(False, help=_TRUST_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
) -> None:
    """Predict labels and probabilities (or entity spans) for each input text; for pair tasks, a score (similarity,
    retrieval) or a label for each pair of texts (.jsonl, .csv or .tsv rows)."""
    _check_output(output, overwrite, (input, run_dir))  # before the model stack is imported: a refusal comes at once
    import json

    from thawing.api import load
    from thawing.data.readers import read_pairs, read_texts
    from thawing.store.atomic import atomic_path

    model = load(run_dir, trust_remote_code=trust_remote_code, verify=not no_verify)
    names = [task] if task else list(model.tasks)
    pairs = [t for t in names if t in model.tasks and model.tasks[t].kind.reads == "pairs"]
    if pairs and len(pairs) != len(names):
        raise InputError(f"this model has pair tasks ({', '.join(pairs)}) and text tasks "
                         f"({', '.join(t for t in names if t not in pairs)}): choose one with --task")
    if pairs:
        fields = pair_fields.split(",") if pair_fields else list(model.tasks[pairs[0]].kind.inputs)
        if len(fields) != 2 or not all(fields):
            raise InputError(f"--pair-fields '{pair_fields}' must name two fields: a,b")
        texts: list = read_pairs(input, fields)
    else:
        texts = read_texts(input, text_field=text_field)
    predictions = model.predict(texts, task=task)
    if task:
        predictions = {task: predictions}
    with atomic_path(output) as tmp, open(tmp, "w") as fh:
        for i, text in enumerate(texts):
            row = {"texts" if pairs else "text": text, **{t: rows[i] for t, rows in predictions.items()}}
            fh.write(json.dumps(row, allow_nan=False) + "\n")  # strict JSON: a NaN probability fails here
    console.print(f"wrote {len(texts)} predictions to {output}")


@app.command()
def study(
    config: Path = typer.Argument(..., help="YAML config: the tasks, data and model to compare plans on."),
    scenarios: str = typer.Option(
        "frozen,heads,progressive,full",
        help="Comma-separated: plan presets (frozen, heads, progressive, full, lora), config (the config's own plan), "
        "head-frozen:<task>, single:<task>, or NAME=schedule.yaml (a stage list; path relative to here); "
        "any of them anchored with +distill and/or +l2sp (full+distill).",
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=2 (repeatable)."),
    study_dir: Path | None = typer.Option(
        None, help="Write the study here instead of runs/<name>-study-<timestamp>."
    ),
    full: bool = typer.Option(False, "--full", help="Also run stages marked optional (progressive's full stage)."),
    seeds: str | None = typer.Option(
        None, help="Run each scenario with these seeds (e.g. 0,1,2) and report means and ranges."
    ),
    single_task: bool = typer.Option(
        False, "--single-task", help="Also run the config's own plan on each task alone (single:<task>)."
    ),
    in_process: bool = typer.Option(
        False, "--in-process", help="Train every scenario in this process (faster to start; CPU memory not measured)."
    ),
    interpolate: str | None = typer.Option(
        None, help="Interpolate this scenario's runs with the pretrained encoder (WiSE-FT), one row per alpha."
    ),
    alphas: str = typer.Option("0,0.25,0.5,0.75,1", help="The alphas of --interpolate."),
) -> None:
    """Train the config once per freezing scenario (and seed) and compare them; prints the study directory last."""
    from thawing.config import load_config
    from thawing.progress import ProgressPrinter
    from thawing.store.run_dir import RunDir
    from thawing.study.run import run_study
    from thawing.study.scenarios import SINGLE

    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise InputError(f"--seeds '{seeds}' must be integers separated by commas") from None
    alpha_list = _alphas(alphas)
    cfg = load_config(config, set_)
    RunDir.check_creatable(study_dir)
    names = [s.strip() for s in scenarios.split(",") if s.strip()]
    names += [f"{SINGLE}{task}" for task in cfg.tasks if single_task and f"{SINGLE}{task}" not in names]
    printer = ProgressPrinter(console)
    try:
        result = run_study(cfg, names, str(study_dir) if study_dir else None, callbacks=[printer],
                           run_optional=full or None, seeds=seed_list, isolate=not in_process,
                           interpolate=interpolate, alphas=alpha_list)
    finally:
        printer.stop()
    Console().print(_study_table(result.read_json(result.study_json)["scenarios"]))
    print(result.path)


@app.command()
def tune(
    config: Path = typer.Argument(..., help="YAML config: the tasks, data and model to search plans for (its tune: "
                                  "section sets the search space)."),
    trials: int | None = typer.Option(None, min=1, help="Finished trials the study runs to (tune.trials; default 20)."),
    timeout: float | None = typer.Option(None, min=1, help="Seconds this process starts trials for (tune.timeout)."),
    objectives: str | None = typer.Option(
        None, help="Comma-separated: score (always first), time, cost, retention (tune.objectives; default score)."),
    storage: str | None = typer.Option(
        None, help="An RDB URL (sqlite:///tune.db, postgresql://...) instead of the journal file in the tune dir."),
    study_name: str | None = typer.Option(None, help="The study's name in the storage (default: the config's name)."),
    tune_dir: Path | None = typer.Option(None, help="Write the tune here instead of runs/<name>-tune."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in the tune dir, or join it from "
                                "another process."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set tune.pruner=none (repeatable)."),
) -> None:
    """Search freezing plans on Optuna, one training run per trial; prints the tune directory last."""
    from thawing.config import load_config
    from thawing.progress import ProgressPrinter
    from thawing.study.tune import run_tune
    from thawing.study.tune_report import summary_line

    names = [o.strip() for o in objectives.split(",") if o.strip()] if objectives is not None else None
    cfg = load_config(config, set_)
    printer = ProgressPrinter(console)
    try:
        result = run_tune(cfg, tune_dir, trials=trials, timeout=timeout, objectives=names, storage=storage,
                          study_name=study_name, resume=resume, callbacks=[printer])
    except StoppedAtOnce as exc:
        raise Interrupted(exc.message, signal.SIGINT) from None
    finally:
        printer.stop()
    summary = result.read_json(result.tune_json)
    console.print(summary_line(summary) + (f"; plan: {result.best_plan}" if summary["best"] is not None else ""))
    print(result.path)


def _alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",")]
    except ValueError:
        raise InputError(f"--alphas must be numbers separated by commas; got '{text}'") from None


@app.command("study-run", hidden=True)
def study_run(
    config: Path = typer.Argument(..., help="The scenario's config (written by `thawing study`)."),
    run_dir: Path = typer.Argument(..., help="Where its run goes."),
    output: Path = typer.Argument(..., help="Where its measurement (JSON) goes."),
    full: bool = typer.Option(False, "--full", help="Also run stages marked optional."),
) -> None:
    """One scenario of a study in its own process, so that its peak memory is its own (used by `thawing study`)."""
    import json

    from thawing.config import load_config
    from thawing.progress import ProgressPrinter
    from thawing.store.atomic import write_text
    from thawing.study.measure import train_measured

    cfg = load_config(config)
    printer = ProgressPrinter(console)
    try:
        measured = train_measured(cfg, str(run_dir), callbacks=[printer], run_optional=full or None, own_process=True)
    finally:
        printer.stop()
    write_text(output, json.dumps(measured) + "\n")


def _study_table(rows: dict):
    from rich.table import Table

    from thawing.study.report import first_primary, task_cells

    tasks = list(first_primary(rows).items())
    table = Table(title="study (final metrics; change against frozen)", title_justify="left")
    for col in ["scenario", *(f"{t} ({m})" for t, m in tasks), "score", "trainable", "updates", "wall s"]:
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, row in rows.items():
        table.add_row(
            name,
            *task_cells(rows, name),
            f"{row['score']:.4f}",
            f"{row['trainable_params']:,}",
            f"{row.get('updates', 0):.0f}",
            f"{row.get('wall_s', 0):.1f}",
        )
    return table


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A finished run directory, or a study directory."),
    trust_remote_code: bool = typer.Option(False, help=_TRUST_HELP + " Only where the breakdown loads the model."),
) -> None:
    """Write the report again from the directory's files (a run's report/, a study's study.md and report/); prints
    the path of its Markdown file (report/index.html beside it is the page to open)."""
    from thawing.api import evaluate_final
    from thawing.reporting.report import write_report
    from thawing.store.run_dir import RunDir
    from thawing.study.report import write_study_report

    if not run_dir.is_dir():
        raise InputError("not a directory", path=run_dir)
    if RunDir(run_dir).is_study():
        print(write_study_report(run_dir))
    else:
        print(write_report(run_dir, lambda run: evaluate_final(run, trust_remote_code=trust_remote_code)))


@app.command()
def export(
    run_dir: str = typer.Argument(..., help=_MODEL_HELP),
    format_: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder to write: the graph, the tokenizer and thawing_onnx.json."
    ),
    quantize: str | None = typer.Option(
        None, help="int8: weights in int8 (onnxruntime dynamic quantization; smaller, outputs change slightly)."
    ),
    overwrite: bool = typer.Option(False, help="Replace an earlier export in that folder."),
    trust_remote_code: bool = typer.Option(False, help=_TRUST_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
) -> None:
    """Export a trained run as one ONNX graph (encoder, embedding and every head); prints the folder."""
    from thawing.deploy.export import export_run

    path = export_run(run_dir, output, format=format_, quantize=quantize, overwrite=overwrite,
                      trust_remote_code=trust_remote_code, verify=not no_verify)
    console.print(f"exported {run_dir} as ONNX to {path}", markup=False, highlight=False)
    print(path)


@app.command()
def push(
    run_dir: Path = typer.Argument(..., help="A finished run directory (or its final/ folder)."),
    repo_id: str = typer.Argument(..., help="The Hugging Face repo to push to: owner/name (created if new)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing public one is "
                                 "refused, not changed)."),
    revision: str | None = typer.Option(None, help="The branch to push to (created if new) [default: main]."),
    commit_message: str | None = typer.Option(
        None, help="The commit's message [default: Upload <run name> with thawing]."
    ),
) -> None:
    """Upload a finished run's model (its final/ folder, with the model card as README.md) to the Hugging Face Hub,
    where `thawing.load("owner/name")` finds it; prints the commit's URL. The token: HF_TOKEN, or `hf auth login`."""
    from thawing.deploy.hub import push as push_model

    url = push_model(run_dir, repo_id, private=private, revision=revision, commit_message=commit_message)
    console.print(f"pushed {run_dir} to {repo_id}", markup=False, highlight=False)
    print(url)


@app.command()
def interpolate(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    alphas: str = typer.Option("0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", help="Comma-separated, from 0 to 1."),
    floor: float | None = typer.Option(None, help="Keep alphas whose retention is at least this (e.g. 0.99)."),
    probe: str | None = typer.Option(None, help="The probe whose retention counts (default: the lowest)."),
    save: bool = typer.Option(True, help="Save the chosen alpha's model as RUN/final-interpolated/."),
    trust_remote_code: bool = typer.Option(False, help=_TRUST_HELP),
) -> None:
    """Interpolate the trained encoder with the pretrained one (WiSE-FT), re-fit the heads at each alpha, measure
    tasks and probes; writes RUN/interpolate/interpolate.json and interpolate.png and prints the chosen alpha."""
    from thawing.progress import ProgressPrinter
    from thawing.study.interpolate import interpolate as run_interpolation

    values = _alphas(alphas)
    printer = ProgressPrinter(console)
    try:
        result = run_interpolation(run_dir, values, floor=floor, probe=probe, save=save, callbacks=[printer],
                                   trust_remote_code=trust_remote_code)
    finally:
        printer.stop()
    for point in result["points"]:
        console.print(f"alpha {point['alpha']:g}: dev {point['dev_score']:.4f}, test {point['score']:.4f}, "
                      f"retention {point['retention']}", markup=False, highlight=False)
    console.print(f"chosen: alpha {result['chosen']} ({result['rule']})", markup=False, highlight=False)


@app.command()
def serve(
    run_dir: str = typer.Argument(..., help=_MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the service has no authentication."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0: a free one, printed)."),
    max_batch: int = typer.Option(64, min=1, help="Texts per model run: concurrent requests are grouped up to it."),
    max_wait_ms: float = typer.Option(5.0, min=0, help="How long a request may wait for others to join its batch."),
    batch_size: int = typer.Option(16, min=1, help="Texts per encoder forward within a model run, longest first."),
    max_texts: int = typer.Option(256, min=1, help="Texts per request; more is refused (413)."),
    max_text_bytes: int = typer.Option(16384, min=1, help="UTF-8 bytes per text; more is refused (413)."),
    max_queue: int = typer.Option(4096, min=1, help="Texts waiting for the model; past it requests get 503."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for the model [default: torch's]."),
    device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda or mps."),
    log_level: str = typer.Option("info", help="uvicorn's log level: critical, error, warning, info, debug."),
    docs: bool = typer.Option(True, "--docs/--no-docs", help="Serve GET /docs (the API page) and /openapi.json."),
    request_timeout: float = typer.Option(10.0, help="Seconds a client has to send a whole request; a slower "
                                          "connection (or one that sends nothing) is closed."),
    graceful_timeout: int = typer.Option(30, min=0, help="On SIGTERM or Ctrl-C, seconds that requests in flight get "
                                         "to be answered before the server stops."),
    trust_remote_code: bool = typer.Option(False, help=_TRUST_HELP),
    no_verify: bool = typer.Option(False, "--no-verify", help=_NO_VERIFY_HELP),
) -> None:
    """Serve a trained run over HTTP: POST /predict, POST /embed, GET /health, GET /info (JSON), GET /docs."""
    from thawing.deploy.serve import LOG_LEVELS, ServeSettings, listen, require_dependencies

    require_dependencies()  # a missing package, bad settings or a taken port fail before the model loads
    if log_level not in LOG_LEVELS:
        raise InputError(f"--log-level '{log_level}': choose {', '.join(LOG_LEVELS)}")
    settings = ServeSettings(max_batch=max_batch, batch_size=batch_size, max_wait_ms=max_wait_ms, max_texts=max_texts,
                             max_text_bytes=max_text_bytes, max_queue=max_queue, threads=threads, docs=docs,
                             request_timeout_s=request_timeout, graceful_timeout_s=graceful_timeout)
    sock = listen(host, port)
    from thawing.api import load
    from thawing.deploy.serve import serve as run_server

    with sock:
        model = load(run_dir, device=device, trust_remote_code=trust_remote_code, verify=not no_verify)
        port = sock.getsockname()[1]
        console.print(f"serving {run_dir} ({', '.join(model.tasks)}) on http://{host}:{port}", markup=False,
                      soft_wrap=True)  # one line, whatever the width: scripts read the port from it
        run_server(model, sock, settings=settings, log_level=log_level)


def main() -> None:
    """Entry point: run the app, turning user errors into a message and exit code 2."""
    logging.basicConfig(level=os.environ.get("THAWING_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ThawingError as exc:
        # soft_wrap: never break the message at the terminal's width, so a long path stays whole (and can be copied)
        console.print(f"error: {exc}", style="bold red", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
