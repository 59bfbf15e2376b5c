"""The run config: typed pydantic models, validated at load, with every error reported at once.

Flow: YAML file -> `--set a.b=c` overrides -> `load_config` -> `RunConfig`. Unknown keys are rejected
with their dotted path and the closest valid name. Relative data paths are resolved against the
directory of the config file, so a config works from any working directory.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from thawing.data.rows import InlineRows, dataset_dict_splits, json_value, split_source
from thawing.errors import ConfigError

SPLITS = ("train", "dev", "test")
# A task name becomes part of group names (head:<task>), metric keys (<task>/<metric>) and file rows, where '*' is the
# selection score: only plain characters are safe in all of them.
TASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A run name becomes a folder name (runs/<name>-<timestamp>): never a path, never hidden, never too long for a file
# system (255 bytes, with room for the timestamp and a study's suffix).
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def _task_name(name: str) -> str:
    if not TASK_NAME.fullmatch(name):
        raise ValueError(f"task name {name!r} is not allowed: use 1 to 64 letters, digits, '_' or '-' (a task name "
                         "is used in group names, metric keys and files)")
    return name


def _run_name(name: str) -> str:
    if not RUN_NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(f"{shown} is not allowed as a run name: it names the run folder, so use 1 to 100 letters, "
                         "digits, '.', '_' or '-', not starting with '.' (no '/')")
    return name


def _steps_or_epoch(value: Any) -> Any:
    """`eval_every`: 'epoch' or a positive whole number of optimizer steps (0 would divide by zero, a negative
    number would never evaluate)."""
    if value is None or value == "epoch":
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be 'epoch' or a positive whole number of optimizer steps, got {value!r}")
    return value


TaskName = Annotated[str, AfterValidator(_task_name)]
EvalEvery = Annotated[int | Literal["epoch"], BeforeValidator(_steps_or_epoch)]


class _Strict(BaseModel):
    # allow_inf_nan: an infinite epoch count or learning rate is never meant (`.inf` is valid YAML).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    name: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_length: int | None = Field(None, gt=0)
    pooling: Literal["mean", "cls", "last", "max"] | None = None  # None: the model's own; model/pooling.py POOLERS
    normalize: bool | None = None  # None: the model's own Normalize module decides
    prompt: str | None = None
    trust_remote_code: bool = False


class SplitPaths(_Strict):
    train: str
    dev: str | None = None
    test: str | None = None


SplitSource = Annotated[str | InlineRows | None, PlainValidator(split_source)]


class TaskSplits(_Strict):
    """A task's data per split: a path each (a file, a HF dataset), or in memory (a list of dicts, a Dataset)."""

    train: SplitSource
    dev: SplitSource = None
    test: SplitSource = None

    def in_memory(self) -> list[str]:
        """The splits given in memory."""
        return [split for split in SPLITS if isinstance(getattr(self, split), list)]


class HeadConfig(_Strict):
    type: Literal["linear", "mlp"] = "linear"
    hidden_size: int = Field(256, gt=0, le=65536)  # an MLP head's width (larger: a typo, not a head)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    product: bool = False  # pair classification: the head also reads u * v, beside (u, v, |u - v|)


class PerClassLimit(_Strict):
    """`limit: {train: {per_class: N}}`: N examples of every class, drawn at random (seeded by train.seed) and kept in
    file order; a class with fewer keeps all of its own. Few-shot experiments need the same N per class, which the
    first N rows of a sorted or skewed file do not give."""

    per_class: int = Field(gt=0)


class TaskConfig(_Strict):
    type: Literal["classification", "token-classification", "multi-label", "similarity", "pair-classification",
                  "retrieval"]
    data: Annotated[TaskSplits, BeforeValidator(dataset_dict_splits)]
    format: Literal["auto", "jsonl", "csv", "tsv", "conll", "hf"] = "auto"
    text_field: str = "text"
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    tag_scheme: str = "IOB2"
    labels: list[str] | None = None
    # The first N rows of a split; or, for a classification task's train split, N per class (PerClassLimit).
    limit: dict[Literal["train", "dev", "test"], int | PerClassLimit] = Field(default_factory=dict)
    # The share of train carved off as dev where no dev split is given. None: 10%, except where 10% would hold fewer
    # than train.small_data.min_dev examples: dev then cannot choose (training/small_data.py), so the carve keeps only
    # train.small_data.dev_rows and the rest trains (config/tasks.py `dev_rows`).
    dev_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    prompt: str | None = None
    head: HeadConfig = Field(default_factory=HeadConfig)
    loss_weight: float = Field(1.0, ge=0.0)
    # Classification: also SetFit's contrastive pair loss on the sentence embeddings, at this weight, in every stage
    # that trains the encoder (training/pairs.py); 0: off.
    pair_loss: float = Field(0.0, ge=0.0)
    label_separator: str = Field("|", min_length=1)  # multi-label CSV/TSV: splits a cell into its labels
    threshold: float | Literal["tune"] | None = None  # multi-label: probability to predict a label; None: 0.5
    # format: hf only. The dataset's subset (its config name: `sst2` of `glue`), and the dataset's split read for
    # each of ours (`{dev: validation_matched}`, or a slice `train[:90%]`); unset, train reads train, dev reads dev
    # or validation, test reads test.
    hf_subset: str | None = Field(None, min_length=1)
    hf_split: dict[Literal["train", "dev", "test"], Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    # Sentence pairs (task_types/pair.py): similarity and pair-classification read two sentences, retrieval a query,
    # its positive and, in every row or none, a hard negative.
    sentence1_field: str = "sentence1"
    sentence2_field: str = "sentence2"
    score_field: str = "score"  # similarity: the pair's score
    score_range: tuple[float, float] | None = None  # similarity: scores scale from it to [0, 1]; None: train's range
    loss: Literal["cosent", "cosine_mse"] = "cosent"  # similarity's loss
    query_field: str = "query"
    positive_field: str = "positive"
    negative_field: str = "negative"
    temperature: float = Field(0.05, gt=0.0, le=1.0)  # retrieval: the softmax temperature (scale 1 / temperature)

    @field_validator("tag_scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from thawing.data.tags import TAG_SCHEMES

        if value.upper() not in TAG_SCHEMES:
            raise ValueError(f"unknown tag scheme '{value}'; choose one of {', '.join(TAG_SCHEMES)}")
        return value.upper()

    @model_validator(mode="after")
    def _multi_label_options(self) -> TaskConfig:
        # Silently ignoring them would hide a task whose type was mistyped.
        given = [name for name, on in (("threshold", self.threshold is not None),
                                       ("label_separator", self.label_separator != "|")) if on]
        if given and self.type != "multi-label":
            raise ValueError(f"'{given[0]}' applies only to multi-label tasks; this task's type is {self.type}")
        if self.pair_loss and not _task_type(self.type).pairs:  # pairs need one label per sentence
            raise ValueError(f"'pair_loss' applies only to classification tasks; this task's type is {self.type}")
        if isinstance(self.threshold, float) and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1 (or be 'tune'), got {self.threshold}")
        for split, limit in self.limit.items():
            # Per class needs one class per row: a token task has a tag per word, a multi-label row several labels.
            if isinstance(limit, PerClassLimit) and self.type != "classification":
                raise ValueError(f"limit.{split}.per_class applies to classification tasks; this task's type is "
                                 f"{self.type} (give the first N rows: limit: {{{split}: N}})")
            # Dev and test are what a run is judged on: a seeded draw there would change with train.seed.
            if isinstance(limit, PerClassLimit) and split != "train":
                raise ValueError(f"limit.{split}.per_class: only the train split is drawn per class (dev and test "
                                 "are what runs are compared on); give the first N rows instead")
        return self

    @model_validator(mode="after")
    def _pair_options(self) -> TaskConfig:
        # Silently ignoring them would hide a task whose type was mistyped.
        applies = {"sentence1_field": ("similarity", "pair-classification"),
                   "sentence2_field": ("similarity", "pair-classification"), "score_field": ("similarity",),
                   "score_range": ("similarity",), "loss": ("similarity",), "query_field": ("retrieval",),
                   "positive_field": ("retrieval",), "negative_field": ("retrieval",), "temperature": ("retrieval",),
                   "labels": ("classification", "token-classification", "multi-label", "pair-classification"),
                   "text_field": ("classification", "multi-label")}
        for name, types in applies.items():
            # Set to other than the default: a run directory's config.yaml writes every key out.
            if getattr(self, name) != type(self).model_fields[name].default and self.type not in types:
                raise ValueError(f"'{name}' applies only to {' and '.join(types)} tasks; this task's type is "
                                 f"{self.type}")
        if self.head.product and self.type != "pair-classification":
            raise ValueError(f"'head.product' applies only to pair-classification tasks; this task's type is "
                             f"{self.type}")
        if self.score_range is not None and not self.score_range[0] < self.score_range[1]:
            raise ValueError(f"score_range must be [low, high] with low < high, got {list(self.score_range)}")
        return self

    @model_validator(mode="after")
    def _hf_options(self) -> TaskConfig:
        given = [name for name, on in (("hf_subset", self.hf_subset is not None), ("hf_split", bool(self.hf_split)))
                 if on]
        if given and self.format != "hf":
            raise ValueError(f"'{given[0]}' applies to Hugging Face datasets: set format: hf (this task's format is "
                             f"{self.format})")
        unread = [split for split in self.hf_split if getattr(self.data, split) is None]
        if unread:
            raise ValueError(f"hf_split.{unread[0]}: the task has no data.{unread[0]} to read it from")
        return self

    @model_validator(mode="after")
    def _rows_in_memory(self) -> TaskConfig:
        """Rows in memory keep the fields the task reads, as JSON values: exactly what the run directory's JSONL copy
        of them gives back when the run resumes or is evaluated. A value JSON cannot hold is refused here, before
        anything runs."""
        splits = self.data.in_memory()
        if splits and self.format != "auto":
            raise ValueError(f"format: {self.format} applies to files; data.{splits[0]} is in memory (leave format "
                             "unset)")
        fields = {"token-classification": (self.tokens_field, self.tags_field),
                  "similarity": (self.sentence1_field, self.sentence2_field, self.score_field),
                  "pair-classification": (self.sentence1_field, self.sentence2_field, self.label_field),
                  "retrieval": (self.query_field, self.positive_field, self.negative_field),
                  }.get(self.type, (self.text_field, self.label_field))
        for split in splits:
            rows = getattr(self.data, split)
            for index, row in enumerate(rows):
                rows[index] = {name: json_value(row[name], f"data.{split}, row {index}, field '{name}'")
                               for name in fields if name in row}
        return self


# No useful rate comes near this (rates far below it already blow the weights up, which the non-finite guard stops
# with exit 2); past float32's range (3e38) a rate overflowed inside the optimizer with a traceback.
MAX_LR = 1e12


class LearningRates(_Strict):
    heads: float = Field(3.0e-2, gt=0, le=MAX_LR)  # tuned for linear heads on frozen MiniLM (TREC/SST-2 train+dev)
    encoder: float = Field(2.0e-5, gt=0, le=MAX_LR)
    projection: float | None = Field(None, gt=0, le=MAX_LR)  # None: same as heads


class SamplingConfig(_Strict):
    strategy: Literal["proportional", "round_robin", "temperature"] = "proportional"
    temperature: float = Field(2.0, ge=0.01, le=100.0)  # n^(1/T): past these 1/T over- or underflows, or is a typo


class SmallDataConfig(_Strict):
    """When the smallest dev split of the run's tasks has fewer than `min_dev` examples, one example moves its score by
    more than 2 points, so the dev score cannot choose between stages or epochs (training/small_data.py). Then every
    stage runs its epochs (raised to at least `min_updates` updates), with no plateau stop, keeps its last weights,
    and the plan never stops early; and a stage that trains only centroid-started heads (`train.head_init`) trains
    them only where cross-validation on train says training beats the centroids (training/head_start.py)."""

    min_dev: int = Field(50, ge=0)  # 0: never treat a run as small
    min_updates: int = Field(50, ge=0)
    # A dev split carved from such a small train split (no `dev_fraction` set) keeps this many examples; the others
    # train. With 8 questions per class, the pairs preset went from 0.782 (a 10% carve) to 0.828 (one row) on TREC
    # coarse, 3 seeds (docs/benchmarks.md).
    dev_rows: int = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict) and "centroid_init" in data:  # it lived here when it applied to small runs only
            raise ValueError("'centroid_init' is now train.head_init (centroids or random), for runs of every size")
        return data

    @model_validator(mode="after")
    def _used(self) -> SmallDataConfig:
        # With min_dev 0 no run is small, and min_updates would be silently ignored. Its default passes: a run's
        # config.yaml writes every field out, and `--resume` reads it back.
        for key in ("min_updates", "dev_rows"):
            if self.min_dev == 0 and getattr(self, key) != type(self).model_fields[key].default:
                raise ValueError(f"'{key}' has no effect with min_dev 0 (no run is treated as small data)")
        return self


class TrainConfig(_Strict):
    batch_size: int = Field(32, gt=0)
    max_tokens: int | None = Field(None, gt=0)  # fill batches to this many padded tokens instead of batch_size
    pad_to_multiple_of: int | None = Field(None, gt=0)  # round padded lengths up: fewer distinct shapes to compile
    # Speed switches; None = auto, on where measured to pay off (docs/benchmarks.md): on a GPU in bf16/fp16,
    # packing with flash varlen attention and per-layer torch.compile; off on CPU, where both measured slower.
    packing: bool | None = None  # run sentences without padding; true: varlen, else block-diagonal rows, anywhere
    pack_width: int | None = Field(None, gt=0)  # tokens per packed row; None: the model's max_length
    compile: bool | None = None  # torch.compile each layer; None: once training runs packed with varlen
    # Recompute each layer's activations in the backward instead of keeping them: less memory, about a third more
    # compute per training step (the backbone's own activation checkpointing, non-reentrant).
    gradient_checkpointing: bool = False
    epochs: float = Field(3, gt=0)
    lr: LearningRates = Field(default_factory=LearningRates)
    seed: int = Field(0, ge=0, lt=2**32)  # what numpy, torch and Python's random all take
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accum: int = Field(1, gt=0)  # micro-batches per optimizer update
    update_tokens: int | None = Field(None, gt=0)  # or: micro-batches until this many real tokens per update
    warmup: float = Field(0.1, ge=0)  # < 1: a fraction of the stage's steps; >= 1: steps
    lr_schedule: Literal["constant", "linear", "cosine", "slanted_triangular"] = "linear"
    eval_every: EvalEvery = "epoch"
    eval_batch_size: int = Field(64, gt=0)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else no
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    checkpoint: bool = True  # save checkpoints, so a stopped run resumes (`thawing train --resume`)
    # Inside a stage too: every N updates, or every "Nm" minutes (e.g. "30m"); None: at stage ends only.
    checkpoint_every: int | str | None = "30m"
    keep_checkpoints: bool = False  # keep checkpoints/ once the run has finished (it holds a copy of the model)
    # a non-finite loss or gradient: the update is never applied; the run stops (exit 2) at the next read of the
    # training records (every log_every updates, evaluations, checkpoints, a stage's end), or skips it
    nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_limit: int = Field(10, gt=0)  # with skip: the run stops at this many skipped updates
    log_every: int = Field(10, gt=0)  # training records (loss per task, rates, speed) in metrics.jsonl, every N updates
    # trackers fed what metrics.jsonl gets, through accelerate's (training/tracking.py)
    report_to: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(default_factory=list)
    small_data: SmallDataConfig = Field(default_factory=SmallDataConfig)  # a dev split too small to choose by
    # How a linear single-label head starts when a stage first trains it: from its class centroids, scaled (the
    # `frozen` baseline with a sharper softmax), or at random. From centroids, a stage also evaluates before its first
    # update, so the best it keeps is never below its start on dev (training/head_start.py).
    head_init: Literal["centroids", "random"] = "centroids"

    @field_validator("checkpoint_every")
    @classmethod
    def _interval(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, str) and not re.fullmatch(r"\d+(\.\d+)?m", value.strip()):
            raise ValueError(f"'{value}' is neither a number of updates nor minutes like '30m'")
        if isinstance(value, int) and value <= 0:
            raise ValueError("checkpoint_every must be a positive number of updates")
        return value

    @model_validator(mode="after")
    def _one_accumulation(self) -> TrainConfig:
        if self.update_tokens and self.grad_accum > 1:
            raise ValueError(
                "set either grad_accum (micro-batches per update) or update_tokens (tokens per update), not both"
            )
        return self


class StageRates(_Strict):
    heads: float | None = Field(None, gt=0, le=MAX_LR)
    encoder: float | None = Field(None, gt=0, le=MAX_LR)  # the top trainable layer's rate; lower layers decay
    projection: float | None = Field(None, gt=0, le=MAX_LR)


class EarlyStopping(_Strict):
    patience: int | None = Field(None, gt=0)  # evaluations without gain before stopping; None: never
    min_delta: float = Field(0.0, ge=0)
    metric: str | None = None  # None: the run's selection score; else "task/metric" or a metric name


class DistillConfig(_Strict):
    weight: float = Field(1.0, ge=0)
    loss: Literal["cosine", "mse"] = "cosine"  # between the current and the pretrained sentence embeddings


class L2SPConfig(_Strict):
    weight: float = Field(0.01, ge=0)  # times the squared distance of trainable encoder weights from pretrained


class RetainConfig(_Strict):
    """Anchoring to the pretrained encoder while a stage trains (training/retain.py); a weight of 0 is off."""

    distill: DistillConfig | None = None  # on the task texts of each micro-batch
    l2sp: L2SPConfig | None = None


ALL_LINEAR = "all-linear"


class LoraSettings(_Strict):
    """LoRA adapters a stage trains (thawing/model/lora.py): low-rank updates of linear modules of the selected layers,
    merged into those modules' weights when the stage ends."""

    r: int = Field(8, gt=0, le=4096)  # the rank of each update
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the adapter's input, while the stage trains
    layers: str | list[str] = "encoder"  # layer selectors (freezing.py): layers[a:b], layers.i, encoder, -layers.i
    # Generic names (query, key, value, attention_output, intermediate or up, gate, output or down), the model's own
    # module names (q_proj, attention.self.query, dense), or "all-linear": every linear module of the layers.
    targets: list[str] | Literal["all-linear"] = Field(default_factory=lambda: ["query", "value"])

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not all(value)):
            raise ValueError("give a layer selector such as 'layers[-6:]' (an empty one would adapt nothing)")
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _some_targets(cls, value: Any) -> Any:
        if isinstance(value, str) and value != ALL_LINEAR:  # one message, not one per member of the union
            raise ValueError(f"give a list of module names, e.g. [{value}], or '{ALL_LINEAR}'")
        if not isinstance(value, list):
            return value
        if not value or not all(isinstance(t, str) and t.strip() for t in value):
            raise ValueError("name at least one module, e.g. [query, value], or give 'all-linear'")
        if len(set(value)) != len(value):
            raise ValueError(f"a target is named twice: {value}")
        if ALL_LINEAR in value:
            raise ValueError("'all-linear' already names every linear module: give it alone, as targets: all-linear")
        return value


class StageConfig(_Strict):
    """One stage of a plan: which groups train, how fast, for how long, and when to stop."""

    name: str
    train: list[str] = Field(default_factory=list)  # selectors, see freezing.py; [] = nothing trains
    epochs: float = Field(1, ge=0)
    lr: StageRates = Field(default_factory=StageRates)  # unset rates fall back to train.lr
    layer_decay: float = Field(1.0, gt=0, le=1)
    warmup: float | None = Field(None, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine", "slanted_triangular"] | None = None
    eval_every: EvalEvery | None = None
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    restore_best: bool = True
    optional: bool = False
    retain: RetainConfig | None = None  # None: the config's top-level `retain`
    lora: LoraSettings | None = None  # train LoRA adapters too (merged into the encoder when the stage ends)
    # false: the stage trains by the losses added on sentence embeddings alone (the tasks' `pair_loss`,
    # `retain.distill`), not by the tasks' own losses: SetFit's contrastive stage before its head is fitted
    task_loss: bool = True
    # In this stage, the pair-loss weight of every classification task that sets no `pair_loss` of its own (the
    # `pairs` preset's first stage: 1); None: the tasks' own weights alone.
    pair_loss: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _lora_trains(self) -> StageConfig:
        if self.lora is not None and self.epochs == 0:  # adapters that never train would be merged as zeros
            raise ValueError(f"stage '{self.name}' has lora but epochs: 0; a LoRA stage must train")
        return self


PROBE_FIELDS = {  # the fields each probe type reads; setting another one is refused
    "similarity": ("sentence1_field", "sentence2_field", "score_field"),
    "transfer": ("text_field", "label_field", "test_fraction"),
    "drift": ("text_field",),
}


class ProbeConfig(_Strict):
    """Data the run evaluates the encoder on and never trains on (thawing/probes.py): at the start, after every stage
    and at the end, to measure what training keeps of the pretrained encoder."""

    type: Literal["similarity", "transfer", "drift"]
    data: str | SplitPaths  # similarity and drift: one file; transfer: {train, test} (test carved when absent)
    # the first N rows (per split for transfer); N > 0 (0 would measure nothing, and a negative N means nothing)
    limit: PositiveInt | dict[Literal["train", "test"], PositiveInt] | None = None
    text_field: str = "text"
    label_field: str = "label"
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # transfer without a test split
    sentence1_field: str = "sentence1"
    sentence2_field: str = "sentence2"
    score_field: str = "score"

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ProbeConfig:
        fields = {f for fs in PROBE_FIELDS.values() for f in fs}
        # A field at its default is not a choice (a run's config.yaml writes every field out).
        other = sorted(f for f in fields - set(PROBE_FIELDS[self.type])
                       if getattr(self, f) != type(self).model_fields[f].default)
        if other:
            raise ValueError(f"'{other[0]}' does not apply to a {self.type} probe")
        if self.type != "transfer" and not isinstance(self.data, str):
            raise ValueError(f"a {self.type} probe reads one file: give `data` as a path")
        if not isinstance(self.data, str) and self.data.dev is not None:
            raise ValueError("a transfer probe fits on `train` and scores on `test`; it has no `dev`")
        if isinstance(self.limit, dict) and self.type != "transfer":
            raise ValueError("a per-split `limit` applies to transfer probes; give a number")
        return self


class CacheConfig(_Strict):
    enabled: bool | Literal["auto"] = "auto"
    dir: str | None = None  # None: $THAWING_CACHE or ~/.cache/thawing
    max_gb: float = Field(4.0, gt=0)  # memory budget of the boundary cache; above it, no cache
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # boundary states; auto: bf16 on GPU, fp32 on CPU


# The stages a tuned plan is made of, in the order they run when chosen (study/tune_space.py builds each).
TUNE_STAGES = ("heads", "top", "discriminative", "full", "lora")
TUNE_OBJECTIVES = ("score", "time", "cost", "retention")


def _ordered(low: float, high: float, what: str) -> None:
    if low > high:
        raise ValueError(f"{what}: the low end {low} is above the high end {high}")


IntRange = tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
RateRange = tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]  # searched on a log scale


class TuneSpace(_Strict):
    """The plan knobs `thawing tune` searches (study/tune_space.py). Each range is [low, high], both ends included
    (learning rates on a log scale); equal ends fix the knob."""

    # The plans' shapes: which stages run, in TUNE_STAGES order (heads, top, discriminative, full, lora).
    shapes: list[list[Literal["heads", "top", "discriminative", "full", "lora"]]] = Field(default_factory=lambda: [
        ["full"], ["heads", "full"], ["heads", "top"], ["heads", "discriminative"],
        ["heads", "top", "discriminative"], ["heads", "lora"]])
    top_layers: IntRange | None = None  # the top stage's layers; None: 1 to half the model's layers
    discriminative_layers: IntRange | None = None  # the discriminative stage's layers; None: 1 to all
    # Each stage's epochs (whole numbers); a shape's every stage needs a range here.
    epochs: dict[Literal["heads", "top", "discriminative", "full", "lora"], IntRange] = Field(
        default_factory=lambda: {"heads": (1, 6), "top": (1, 4), "discriminative": (1, 4), "full": (1, 4),
                                 "lora": (1, 4)})
    heads_lr: RateRange = (3e-3, 1e-1)  # heads in the heads-only stage
    # heads in the stages that train the encoder: up to the `full` preset's 3e-2 (heads from centroids); the
    # staged presets train them at 3e-4 to 5e-4 after a heads stage
    head_lr: RateRange = (1e-5, 3e-2)
    top_lr: RateRange = (1e-5, 3e-4)  # the top stage's encoder rate
    encoder_lr: RateRange = (5e-6, 2e-4)  # the discriminative and full stages' encoder rate (top layer)
    lora_lr: RateRange = (1e-4, 2e-3)  # the LoRA stage's adapters
    lora_rank: list[Annotated[int, Field(gt=0, le=4096)]] = Field(default_factory=lambda: [4, 8, 16, 32])  # choices
    # the discriminative and full stages' layer decay (each layer's rate over the one above)
    layer_decay: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.5, 1.0)
    # warm-up of every stage that trains the encoder, as a fraction of the stage's updates
    warmup: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.0, 0.2)
    # retain.distill's weight in the encoder stages; None: searched in [0, 1] when retention is an objective, else off
    distill: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] | None = None
    # every trial stage's plateau stop (fixed, not searched); None: the presets' (training/stages.py `plateau`)
    early_stopping: EarlyStopping | None = None

    @model_validator(mode="after")
    def _valid(self) -> TuneSpace:
        if not self.shapes or not all(self.shapes):
            raise ValueError("shapes: give at least one plan, each a non-empty list of stages")
        for shape in self.shapes:
            if list(shape) != sorted(set(shape), key=TUNE_STAGES.index):
                raise ValueError(f"shapes: {shape}: each stage at most once, in the order {', '.join(TUNE_STAGES)}")
        for name in ("top_layers", "discriminative_layers", "heads_lr", "head_lr", "top_lr", "encoder_lr", "lora_lr",
                     "layer_decay", "warmup", "distill"):
            value = getattr(self, name)
            if value is not None:
                _ordered(*value, name)
        for stage, (low, high) in self.epochs.items():
            _ordered(low, high, f"epochs.{stage}")
        missing = sorted({s for shape in self.shapes for s in shape} - set(self.epochs))
        if missing:
            raise ValueError(f"epochs: no range for the stage(s) {', '.join(missing)} that shapes use")
        if not self.lora_rank or len(set(self.lora_rank)) != len(self.lora_rank):
            raise ValueError("lora_rank: give distinct ranks to choose from")
        return self


class TuneConfig(_Strict):
    """`thawing tune`'s settings (study/tune.py); its command-line options override them."""

    space: TuneSpace = Field(default_factory=TuneSpace)
    trials: int = Field(20, gt=0)  # finished (completed or pruned) trials the study runs to, over all its processes
    timeout: float | None = Field(None, gt=0)  # seconds this process starts trials for; None: no limit
    # score (dev selection score, always first), time (stage wall time), cost (trained examples x trainable
    # parameters), retention (the mean retention of the config's similarity and transfer probes)
    objectives: list[Literal["score", "time", "cost", "retention"]] = Field(default_factory=lambda: ["score"])
    pruner: Literal["median", "hyperband", "none"] = "median"  # one objective only: Optuna cannot prune several
    startup_trials: int = Field(5, ge=0)  # trials before the sampler's model and the median pruner act
    # presets tried first (study/tune_space.py `preset_params`: their knobs clipped into the space); None: `full` and
    # `progressive` where the space has their shapes; []: none
    start: list[Literal["heads", "full", "progressive", "lora"]] | None = None
    # the plan chosen (best_plan.yaml) is the fastest (least stage time) completed trial (several objectives: Pareto
    # trial) whose dev score is within this of the best; 0: the best. (Dev scores of one plan moved by 0.3 points
    # between seeds in docs/benchmarks.md.)
    tolerance: float = Field(0.0, ge=0, lt=1)

    @field_validator("objectives")
    @classmethod
    def _score_first(cls, value: list[str]) -> list[str]:
        if not value or value[0] != "score" or len(set(value)) != len(value):
            raise ValueError(f"objectives: 'score' first, then any of time, cost, retention, each once; got {value}")
        return value


# The named plans (`schedule: <name>`); training/stages.py defines their stages.
PRESETS = ("frozen", "heads", "full", "progressive", "lora", "pairs")


def _schedule_kind(value: Any) -> str | None:
    return "[stages]" if isinstance(value, list) else "[preset]" if isinstance(value, str) else None


# A list of stages or a preset name. Tagged by the value's own type, so a mistake inside a stage is reported once, at
# its place, not beside "schedule: Input should be a valid string" (the tags are left out of the dotted path).
Schedule = Annotated[
    Annotated[list[StageConfig], Tag("[stages]")] | Annotated[str, Tag("[preset]")],
    Discriminator(_schedule_kind, custom_error_type="schedule",
                  custom_error_message=f"expected a preset name ({', '.join(PRESETS)}) or a list of stages"),
]


class RunConfig(_Strict):
    name: Annotated[str, AfterValidator(_run_name)] = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    tasks: dict[TaskName, TaskConfig]
    train: TrainConfig = Field(default_factory=TrainConfig)
    freeze: list[str] = Field(default_factory=list)
    schedule: Schedule | None = None  # None: one stage from `freeze` and `train`
    run_optional: bool = False  # also run stages marked optional
    cache: CacheConfig = Field(default_factory=CacheConfig)
    selection_metric: str | None = None  # None: mean of each task's primary metric
    probes: dict[TaskName, ProbeConfig] = Field(default_factory=dict)  # retention probes (never trained on)
    retain: RetainConfig | None = None  # anchoring for every stage that does not set its own
    tune: TuneConfig | None = None  # the plan search that `thawing tune` runs (study/tune.py); `train` does not read it

    @model_validator(mode="after")
    def _check_tasks(self) -> RunConfig:
        if not self.tasks:
            raise ValueError("at least one task is needed under 'tasks'")
        return self

    @model_validator(mode="after")
    def _retention_probe(self) -> RunConfig:
        if self.tune is not None and "retention" in self.tune.objectives and not any(
                p.type in ("similarity", "transfer") for p in self.probes.values()):
            raise ValueError("tune.objectives: retention needs a similarity or transfer probe under `probes:`")
        return self

    @model_validator(mode="after")
    def _known_preset(self) -> RunConfig:
        if isinstance(self.schedule, str) and self.schedule not in PRESETS:
            raise ValueError(f"schedule: unknown preset '{self.schedule}'; choose one of {', '.join(PRESETS)}")
        return self

    @model_validator(mode="after")
    def _known_metrics(self) -> RunConfig:
        # Checked here, not at the first evaluation: a typo would otherwise cost a whole stage of training.
        problems = []
        if self.selection_metric is not None:
            problems.append(metric_problem(self.selection_metric, self.tasks, "selection_metric"))
        for i, stage in enumerate(self.schedule if isinstance(self.schedule, list) else []):
            if stage.early_stopping.metric is not None:
                problems.append(metric_problem(stage.early_stopping.metric, self.tasks,
                                               f"schedule.{i}.early_stopping.metric"))
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @field_validator("freeze")
    @classmethod
    def _known_freeze(cls, values: list[str]) -> list[str]:
        allowed = ("all", "encoder", "heads", "projection")
        for v in values:
            if v not in allowed and not v.startswith("head:"):
                raise ValueError(f"unknown freeze target '{v}'; choose from {', '.join(allowed)} or head:<task>")
        return values


def _task_type(name: str):
    from thawing.task_types import task_type  # imported when a config is checked: the types bring torch

    return task_type(name)


def metric_problem(metric: str, tasks: dict[str, TaskConfig], key: str) -> str | None:
    """Why `metric` ("task/metric", or a metric name averaged over the tasks that report it) can name no result of
    these tasks, or None when it can. The metrics are those the task types compute (`thawing.task_types`)."""
    from thawing.task_types import task_type

    names = {task: task_type(cfg.type).metric_names for task, cfg in tasks.items()}
    available = ", ".join(f"{task}/{m}" for task, ms in names.items() for m in ms)
    task, sep, name = metric.rpartition("/")
    if sep and task in names and name in names[task]:
        return None
    if not sep and any(metric in ms for ms in names.values()):
        return None
    return f"{key}: '{metric}' names no metric of these tasks; available: {available}"


# ---------------------------------------------------------------------------------------------
# loading


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping: plain YAML keeps the last one, so a second
    task of the same name would silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                raise DuplicateKeyError(None, None, f"key '{key}' is given twice (first on line {first})",
                                        key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """Parse YAML safely, refusing duplicate keys. Raises `yaml.YAMLError`, or ValueError for a value YAML cannot
    build (e.g. a date such as 2024-13-01)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply `a.b=c` overrides, validate, and resolve data paths.

    Raises:
        ConfigError: listing every problem at once, each with its dotted path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = _yaml_file(path, "the config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides or []:
        apply_override(raw, item)
    plan_file = read_schedule_file(raw, path)
    config = parse_config(raw, source=f"{path} (schedule: {plan_file})" if plan_file else str(path))
    return resolve_paths(config, path.parent)


def _yaml_file(path: Path, what: str) -> Any:
    """A YAML file's value; a file that cannot be read or parsed is a ConfigError naming it (and the line)."""
    try:
        return read_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}, {_yaml_problem(exc)}") from None


def read_schedule_file(raw: dict[str, Any], config_path: Path) -> Path | None:
    """`schedule: plan.yaml` in a config, or `--set schedule=@plan.yaml`: the stage list the file holds (the shape of
    `schedule:`, e.g. `thawing tune`'s best_plan.yaml) put in its place. The path is relative to the working directory
    where a file is there, else to the config's folder (as data paths are). Returns the file, or None when `schedule`
    names no file (a preset name, a list).

    Raises:
        ConfigError: the file is missing, unreadable, or holds no list of stages.
    """
    value = raw.get("schedule")
    if not isinstance(value, str) or value in PRESETS:
        return None
    name = value.removeprefix("@")
    if name == value and not name.endswith((".yaml", ".yml")):
        return None  # an unknown preset name: the preset check says so
    file = Path(_resolve(name, config_path.parent) or name)
    if not file.is_file():
        raise ConfigError(f"{config_path}: schedule: the schedule file '{name}' is not found (looked for {file})")
    stages = _yaml_file(file, "the schedule file")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{file}: a schedule file holds a non-empty list of stages (the shape of 'schedule:' in a "
                          "config)")
    raw["schedule"] = stages
    return file


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict, turning pydantic's errors into one readable `ConfigError`."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ConfigError(f"{source}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`1e-4`, `true`, `[a, b]`)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set '{item}': the key '{key}' has an empty part")
    try:  # `@file` (schedule=@plan.yaml: a schedule file) is text as typed; YAML cannot start a word with '@'
        parsed = value if value.startswith("@") else read_yaml(value)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"--set {key.strip()}: cannot read the value {value!r} ({_yaml_problem(exc)}); quote it "
                          "to give a string") from None
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = parsed


def _yaml_problem(exc: BaseException) -> str:
    """What is wrong, with its line and column where YAML knows them, on one line."""
    if isinstance(exc, RecursionError):
        return "invalid YAML: nested too deeply"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + ("" if isinstance(exc, DuplicateKeyError) else "invalid YAML: ") + problem


def resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    """Make relative data paths relative to the config's directory (hub names are left alone)."""
    for task in config.tasks.values():
        if task.format == "hf":
            continue
        for split in SPLITS:
            if not isinstance(getattr(task.data, split), list):  # rows in memory have no path
                setattr(task.data, split, _resolve(getattr(task.data, split), base))
    for probe in config.probes.values():
        if isinstance(probe.data, str):
            probe.data = _resolve(probe.data, base)
        else:
            for split in SPLITS:
                setattr(probe.data, split, _resolve(getattr(probe.data, split), base))
    return config


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None or Path(value).is_absolute():
        return value
    # A path that exists relative to the working directory wins, so `--set` works as typed; either way the
    # resolved config holds an absolute path, valid from anywhere.
    path = Path(value) if Path(value).exists() else base / value
    try:
        return str(path.resolve())
    except (OSError, ValueError, RuntimeError):  # e.g. a NUL byte or a symlink loop: the reader says so
        return str(base / value)


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, as written to a run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _describe(err: dict[str, Any]) -> str:
    loc = _dotted(err["loc"])
    if err["type"] == "extra_forbidden":
        hint = _closest(err["loc"])
        return f"{loc}: unknown key" + (f" (did you mean '{hint}'?)" if hint else "")
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {message}" if loc else message


def _dotted(loc: tuple) -> str:
    """`tasks.ner.head.type`; a key that is empty or holds a dot (a task named 'sst.2') is quoted: `tasks['sst.2']`."""
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("[") and part.endswith("]"):
            continue  # "[key]" (an error in a dict key: the key itself is the place), or a union member's tag
        if isinstance(part, str) and (not part or "." in part):
            out += f"[{part!r}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _closest(loc: tuple) -> str | None:
    """The valid key nearest to the unknown last element of `loc`, walking the model tree."""
    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:  # a dict key such as a task name
            continue
        model = _model_of(field.annotation)
    names = list(getattr(model, "model_fields", {}))
    match = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
    return match[0] if match else None


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
