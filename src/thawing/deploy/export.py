"""Export a trained run for use outside thawing: one ONNX graph with the encoder (backbone, pooling, projection and
normalization, as `Encoder` runs them) and every task's head, for onnxruntime.

    thawing export RUN_DIR --format onnx --output DIR [--quantize int8]

DIR holds `model.onnx`, the tokenizer's files and `thawing_onnx.json` (per task: type, labels, prompt, decision
rule, multi-label threshold; max_length, lower-casing, padding side). The graph takes `input_ids` and
`attention_mask` (int64, batch x sequence, both dynamic) and gives one output per task, named by the task (logits,
(batch, labels); token tasks (batch, sequence, labels)), and `embedding` (batch, D). Pair tasks read the batch as
pairs, each pair's two texts one after the other (a1, b1, a2, b2, ...: an even batch): similarity and retrieval give
the cosine of each pair (pairs, 1), pair classification its logits (pairs, labels).

The graph is traced by torch's TorchScript exporter (`dynamo=False`): the torch.export-based one needs onnxscript,
which thawing does not install. A trace records one path through Python code, so before anything is written the
graph is run by onnxruntime on batches of other sizes and lengths than the traced one, and refused unless it gives
the PyTorch model's outputs (within `TOLERANCE`); `--quantize int8` changes outputs by design, so its differences
are recorded in thawing_onnx.json instead.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from thawing.data.batching import placeholder_word
from thawing.errors import InputError, ThawingError
from thawing.model.encoder import Encoder
from thawing.model.multitask import MultiTaskModel
from thawing.store.atomic import building
from thawing.store.outputs import check_output
from thawing.store.run_dir import ONNX_META, ONNX_MODEL
from thawing.task_types.heads import Cosine

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
OPSET = 17  # LayerNormalization is an ONNX op from 17 on; onnxruntime 1.17 runs it
INPUTS = ("input_ids", "attention_mask")
EMBEDDING = "embedding"
TOLERANCE = 1e-4  # max |onnx - torch|, relative to the largest output magnitude when that is above 1
# Traced with padding in the batch: a batch without it can take a shortcut in transformers' masking (no mask at
# all), which a trace would then bake in for every batch. Checked on other sizes, lengths and a one-word text.
TRACE_TEXTS = ("a longer sentence that the graph is traced with, so that the batch holds padding", "short one")
CHECK_TEXTS = (("the second batch has three texts of other lengths than the traced one", "a", "two words"),
               ("one text, without any padding",))
# With pair tasks a batch holds whole pairs: even sizes, still other than the traced one's, lengths still mixed.
PAIR_CHECK_TEXTS = (("the second batch has four texts of other lengths than the traced one", "a", "two words",
                     "and a fourth"), ("one text, without any padding", "one text, without any padding"))


class ExportGraph(nn.Module):
    """The whole model as one function of (input_ids, attention_mask): each task's logits, then the embedding. The
    encoder runs once; sentence tasks read its pooled embedding, token tasks its token states."""

    def __init__(self, model: MultiTaskModel):
        super().__init__()
        self.model = model
        self.tasks = list(model.specs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = self.model.encoder.token_states(input_ids, attention_mask)
        pooled = self.model.encoder.pool(states, attention_mask)
        reads = {"sentence": pooled, "tokens": states}
        if self.pairs:  # consecutive texts are a pair
            reads["pairs"] = pooled.reshape(-1, 2, pooled.shape[-1])
        logits = [self.output(task, reads) for task in self.tasks]
        return (*logits, pooled)

    @property
    def pairs(self) -> bool:
        return any(self.model.specs[task].kind.reads == "pairs" for task in self.tasks)

    def output(self, task: str, reads: dict[str, torch.Tensor]) -> torch.Tensor:
        """A task's output: its head's on what it reads; a pair task without a head (retrieval) the cosine."""
        kind = self.model.specs[task].kind
        if kind.reads == "pairs" and not kind.has_head:
            return Cosine()(reads["pairs"])
        return self.model.heads[task](reads[kind.reads])


def export_run(run_dir: str | Path, output: str | Path, format: str = "onnx", quantize: str | None = None,
               overwrite: bool = False, trust_remote_code: bool = False, verify: bool = True) -> Path:
    """Export the trained model of `run_dir` (a run directory, its final/ folder, or a Hugging Face repo id, as
    `thawing.load` takes them) into the new folder `output`.

    Returns:
        `output`, holding model.onnx, thawing_onnx.json and the tokenizer's files.

    Raises:
        InputError: an unknown format or quantization, an output that is or holds the run, an existing output
            (without `overwrite`, or that is no earlier export), no trained model.
        ThawingError: onnx or onnxruntime missing; a task named like an input or the embedding; a graph whose
            outputs differ from the PyTorch model's (nothing is written then).

    Example:
        >>> export_run("runs/demo-20261126-101500", "demo-onnx")  # doctest: +SKIP
        PosixPath('demo-onnx')
    """
    from thawing.api import load

    if format not in FORMATS:
        raise InputError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise InputError(f"unknown quantization '{quantize}'; choose one of {', '.join(QUANTIZE)} (or none)")
    output = Path(output)
    check_output(output, [run_dir], overwrite, marker=ONNX_META)
    onnx, onnxruntime = require_onnx()
    trained = load(run_dir, device="cpu", mixed_precision="no", packing=False, trust_remote_code=trust_remote_code,
                   verify=verify)
    graph = ExportGraph(trained.model).float().eval()
    names = output_names(graph.tasks)
    encoder = trained.model.encoder
    output.parent.mkdir(parents=True, exist_ok=True)
    with building(output) as tmp:
        trace(graph, encoder, names, tmp / ONNX_MODEL)
        onnx.checker.check_model(str(tmp / ONNX_MODEL))
        if quantize == "int8":
            quantize_int8(tmp / ONNX_MODEL)
        differences = compare(graph, encoder, names, tmp / ONNX_MODEL)
        if quantize is None:
            worst = max(differences, key=lambda name: differences[name]["relative"])
            if differences[worst]["relative"] > TOLERANCE:
                raise ThawingError(
                    f"{trained.run.path}: the traced ONNX graph gives output '{worst}' "
                    f"{differences[worst]['max_abs']:.3g} away from the PyTorch model (tolerance {TOLERANCE}); this "
                    "architecture does not trace to one graph for every batch, so nothing was written")
        encoder.tokenizer.save_pretrained(tmp)
        meta = metadata(trained.model, names, quantize, differences, trained.name)
        (tmp / ONNX_META).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")
    log.info("exported %s to %s", run_dir, output)
    return output


def require_onnx():
    """The onnx and onnxruntime modules, or a clear error saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        missing = exc.name or "onnx or onnxruntime"
        raise ThawingError(f"ONNX export needs the onnx and onnxruntime packages ({missing} is not installed): "
                           "pip install thawing[onnx]") from None
    return onnx, onnxruntime


def output_names(tasks: list[str]) -> list[str]:
    """The graph's output names: each task's, then `embedding`. ONNX names one value once, so a task may not be
    called like an input or the embedding."""
    taken = [task for task in tasks if task in (*INPUTS, EMBEDDING)]
    if taken:
        raise ThawingError(f"task '{taken[0]}' has the name of the ONNX graph's {taken[0]} "
                           f"{'input' if taken[0] in INPUTS else 'output'}; the graph cannot name both")
    return [*tasks, EMBEDDING]


def trace(graph: ExportGraph, encoder: Encoder, names: list[str], path: Path) -> None:
    """Write the graph to `path`, with batch and sequence axes dynamic."""
    batch = encoder.pad(encoder.token_ids(list(TRACE_TEXTS)))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    for task in graph.tasks:
        reads = graph.model.specs[task].kind.reads
        axes[task] = {0: "batch", 1: "sequence"} if reads == "tokens" else {0: "pairs" if reads == "pairs" else "batch"}
    axes[EMBEDDING] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python value it freezes, and the TorchScript exporter about being the old one:
        # what counts is whether the graph gives the model's outputs on other batches, which `compare` checks.
        for category in (torch.jit.TracerWarning, DeprecationWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(graph, (batch["input_ids"], batch["attention_mask"]), str(path), input_names=list(INPUTS),
                          output_names=names, dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def quantize_int8(path: Path) -> None:
    """Replace the graph at `path` by one whose weights are int8 (onnxruntime's dynamic quantization: activations
    are quantized on the fly, per batch), with a scale per output channel.

    Per channel, because per tensor measurably moved predictions (MiniLM, TREC + SST-2 heads, 2,000 test texts):
    labels agreeing with fp32 91% / 92% per tensor, 96% / 96% per channel; TREC accuracy 0.840 vs 0.862 (fp32 0.862).
    onnxruntime's suggested pre-processing changed nothing there, so its log line about it is left out.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name(f".int8.{path.name}")
    large = path.stat().st_size > 2 * 1024**3  # protobuf's limit: larger graphs keep weights in a side file
    quiet = _Without("pre-processing before quantization")
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=large)
    finally:
        logging.getLogger().removeFilter(quiet)
    os.replace(quantized, path)


class _Without(logging.Filter):
    """Drops log records whose message contains `text`."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def compare(graph: ExportGraph, encoder: Encoder, names: list[str], path: Path) -> dict[str, dict[str, float]]:
    """Per output, the largest |onnxruntime - PyTorch| over the check batches, absolute and relative to the largest
    output magnitude (when above 1)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {name: {"max_abs": 0.0, "relative": 0.0} for name in names}
    for texts in PAIR_CHECK_TEXTS if graph.pairs else CHECK_TEXTS:
        batch = encoder.pad(encoder.token_ids(list(texts)))
        got = session.run(names, {name: batch[name].numpy().astype(np.int64) for name in INPUTS})
        with torch.no_grad():
            want = [x.float().numpy() for x in graph(batch["input_ids"], batch["attention_mask"])]
        for name, a, b in zip(names, got, want, strict=True):
            diff = float(np.abs(a - b).max())
            worst[name]["max_abs"] = max(worst[name]["max_abs"], diff)
            worst[name]["relative"] = max(worst[name]["relative"], diff / max(1.0, float(np.abs(b).max())))
    return worst


def metadata(model: MultiTaskModel, names: list[str], quantize: str | None, differences: dict, run: str) -> dict:
    """thawing_onnx.json: what code outside thawing needs to prepare inputs and read each output."""
    encoder = model.encoder
    tasks = {}
    for task, spec in model.specs.items():
        tokens, pairs = spec.kind.reads == "tokens", spec.kind.reads == "pairs"
        tasks[task] = {
            "type": spec.type,
            "output": task,
            "shape": (["batch", "sequence", "labels"] if tokens else
                      ["pairs", "labels" if spec.kind.has_head else 1] if pairs else ["batch", "labels"]),
            # Token tasks take pre-split words (is_split_into_words), a prompt as leading words that carry no tag;
            # pair tasks a batch of pairs, each pair's two texts one after the other.
            "input": "words" if tokens else "pairs: a1, b1, a2, b2, ..." if pairs else "text",
            "labels": list(spec.labels),
            "prompt": spec.prompt,
            **spec.kind.decision_rule(spec),
        }
    return {
        "format": "thawing-onnx",
        "version": 1,
        "run": run,
        "graph": ONNX_MODEL,
        "opset": OPSET,
        "quantized": quantize,
        "inputs": list(INPUTS),
        "outputs": names,
        # As `Encoder.prepare_texts`: prompt + text, stripped, lower-cased when do_lower_case; then truncated.
        "max_length": encoder.max_length,
        "do_lower_case": encoder.do_lower_case,
        "padding_side": encoder.tokenizer.padding_side,
        # Token tasks: a word that makes no token on its own stands in as this word, as in training and predict.
        "empty_word": placeholder_word(encoder.tokenizer),
        "embedding": {"output": EMBEDDING, "size": encoder.embedding_size, "pooling": encoder.pooling,
                      "normalized": encoder.normalize},
        "tasks": tasks,
        "check": {"tolerance": None if quantize else TOLERANCE, "max_abs_diff": {
            name: round(d["max_abs"], 8) for name, d in differences.items()}},
    }
