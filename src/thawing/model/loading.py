"""Load and save encoders the way their authors meant: sentence-transformers layout (Transformer,
Pooling, Dense, Normalize modules) where there is one, a plain transformers model otherwise.

`save_encoder` writes sentence-transformers layout, so `SentenceTransformer(path)` loads a thawing
model as is and gives the same embeddings; its config_sentence_transformers.json names the tasks' prompts.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from thawing.errors import ThawingError
from thawing.model.encoder import Dense, Encoder
from thawing.model.pooling import ST_POOLING_KEYS, pooling_from_st_config
from thawing.model.resolve import resolve_model
from thawing.model.saved import encoder_folder

log = logging.getLogger(__name__)

ST_TRANSFORMER = "sentence_transformers.models.Transformer"
ST_POOLING = "sentence_transformers.models.Pooling"
ST_DENSE = "sentence_transformers.models.Dense"
ST_NORMALIZE = "sentence_transformers.models.Normalize"
ST_CONFIG = "config_sentence_transformers.json"


def load_encoder(
    name: str,
    *,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    trust_remote_code: bool = False,
    weights: bool = True,
) -> Encoder:
    """Load an encoder by directory or hub id; with `weights=False` its architecture alone, on the meta device (the
    shapes and parameter counts `thawing plan` shows, no weight file read, no memory taken).

    Args:
        name: a directory or hub id; see `resolve_model`. A trained thawing model (a run directory, its final/
            folder, or the hub id it was pushed to) gives its fine-tuned encoder.
        max_length: overrides the model's own maximum sequence length.
        pooling: overrides the model's pooling ("mean", "cls", "last", "max"); plain transformers
            models default to mean pooling.
        normalize: overrides whether embeddings are L2-normalized.
        trust_remote_code: allow the model's own modeling code (`auto_map` in config.json).

    Raises:
        ThawingError: for custom code without `trust_remote_code`, or an unsupported layout.
    """
    root = encoder_folder(resolve_model(name))
    modules = _read_json(root / "modules.json") if (root / "modules.json").is_file() else None
    with _loading(root, "sentence-transformers modules (modules.json)"):
        layout = _parse_modules(root, modules)
    if not (layout["transformer"] / "config.json").is_file():
        raise ThawingError(f"{layout['transformer']}: not a model folder (no config.json); give a model directory "
                           "or hub id as model.name")
    _check_remote_code(layout["transformer"], name, trust_remote_code)

    with _loading(layout["transformer"], "model"), _no_bars():
        backbone = _backbone(layout["transformer"], trust_remote_code, weights)
    with _loading(layout["transformer"], "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(layout["transformer"], trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # decoder tokenizers often lack one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    _check_max_length(max_length, backbone, name)
    st_cfg = layout["st_config"]
    with _loading(root, "projection"):
        projection = nn.Sequential(*[_load_dense(p, weights) for p in layout["dense"]]) if layout["dense"] else None
    encoder = Encoder(
        backbone,
        tokenizer,
        pooling=pooling or layout["pooling"],
        projection=projection,
        normalize=layout["normalize"] if normalize is None else normalize,
        max_length=max_length or st_cfg.get("max_seq_length") or _default_max_length(backbone, tokenizer),
        do_lower_case=bool(st_cfg.get("do_lower_case", False)),
        include_prompt=layout["include_prompt"],
    )
    encoder.declared = _declared(root)
    return encoder


def _declared(root: Path) -> dict:
    """What the model's config_sentence_transformers.json declares that thawing keeps when it saves the model: its
    named prompts and its similarity function."""
    path = root / ST_CONFIG
    config = _read_json(path) if path.is_file() else {}
    if not isinstance(config, dict):
        return {}
    out = {}
    if isinstance(config.get("prompts"), dict):
        out["prompts"] = {str(k): str(v) for k, v in config["prompts"].items()}
    if isinstance(config.get("similarity_fn_name"), str):
        out["similarity_fn_name"] = config["similarity_fn_name"]
    return out


@contextlib.contextmanager
def _no_bars() -> Iterator[None]:
    """Without transformers' weight-loading and shard-writing bars (thawing shows its own progress), as it was after."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _loading(path: Path, what: str) -> Iterator[None]:
    """Turn a failure to read a model's files into one clear error naming the folder.

    transformers, tokenizers and safetensors raise many unrelated types for a missing, truncated or corrupt file
    (OSError, ValueError, SafetensorError, a bare Exception from tokenizers), so any Exception counts here: these
    calls only read the user's files (or run the model's own code, which the user asked for).
    """
    try:
        yield
    except ThawingError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ThawingError(f"{path}: cannot load the {what} ({type(exc).__name__}: {detail}); is the folder a "
                           "complete model? A partly copied or truncated file (e.g. model.safetensors) gives this"
                           ) from exc


def _check_max_length(max_length: int | None, backbone: nn.Module, name: str) -> None:
    """A max_length past the model's position embeddings fails (or reads garbage) on the first long text."""
    positions = getattr(backbone.config, "max_position_embeddings", None)
    if max_length and isinstance(positions, int) and max_length > positions:
        raise ThawingError(f"max_length {max_length} is more than the {positions} positions of model '{name}' "
                           f"(max_position_embeddings); set model.max_length (or --max-length) to {positions} or less")


def _parse_modules(root: Path, modules: list[dict] | None) -> dict:
    """Read a sentence-transformers modules.json into paths and options (plain models: defaults)."""
    layout = {"transformer": root, "pooling": "mean", "dense": [], "normalize": False, "st_config": {},
              "include_prompt": True}
    if modules is None:
        log.info("%s has no modules.json: a plain transformers model, mean pooling", root)
        return layout
    for module in modules:
        kind, path = module["type"], root / _inside(root, module.get("path", ""))
        if kind.endswith(".Transformer"):
            layout["transformer"] = path
            cfg = path / "sentence_bert_config.json"
            layout["st_config"] = _read_json(cfg) if cfg.is_file() else {}
        elif kind.endswith(".Pooling"):
            pooling = _read_json(path / "config.json")
            layout["pooling"] = pooling_from_st_config(pooling)
            layout["include_prompt"] = bool(pooling.get("include_prompt", True))
        elif kind.endswith(".Dense"):
            layout["dense"].append(path)
        elif kind.endswith(".Normalize"):
            layout["normalize"] = True
        else:
            raise ThawingError(f"{root / 'modules.json'}: unsupported sentence-transformers module '{kind}'")
    return layout


def _inside(root: Path, path: str) -> str:
    """A module's path in modules.json, which must stay inside the model's folder: one outside it would load files
    that no manifest of the folder covers. Checked on the text, not resolved: a Hugging Face cache links its files
    to blobs outside the snapshot folder."""
    parts = Path(os.path.normpath(path or ".")).parts
    if Path(path).is_absolute() or (parts and parts[0] == ".."):
        raise ThawingError(f"{root / 'modules.json'}: module path '{path}' leaves the model's folder; a model's "
                           "modules live inside it")
    return path


def _check_remote_code(path: Path, name: str, trust_remote_code: bool) -> None:
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    if config.get("auto_map") and not trust_remote_code:
        raise ThawingError(
            f"model '{name}' ships its own modeling code (auto_map in {path / 'config.json'}). "
            "To run it, set model.trust_remote_code: true in the config, pass --trust-remote-code to the command, "
            "or trust_remote_code=True to thawing.load. "
            "NovaSearch/stella_en_1.5B_v5 needs it for its bidirectional attention: loading it "
            "without that code silently builds a causal model whose embeddings are different."
        )


def _backbone(folder: Path, trust_remote_code: bool, weights: bool) -> nn.Module:
    if weights:
        return AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):  # parameters with shapes and no storage
        return AutoModel.from_config(config, trust_remote_code=trust_remote_code)


def _load_dense(path: Path, weights: bool = True) -> Dense:
    cfg = _read_json(path / "config.json")
    with contextlib.nullcontext() if weights else torch.device("meta"):  # meta: shapes without storage
        dense = Dense(cfg["in_features"], cfg["out_features"], cfg.get("bias", True), _activation(cfg))
    if not weights:
        return dense
    weights_file = path / "model.safetensors"
    state = (load_file(weights_file) if weights_file.is_file()
             else torch.load(path / "pytorch_model.bin", weights_only=True))
    dense.load_state_dict(state)
    return dense


def _activation(cfg: dict) -> nn.Module:
    name = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    module_name, _, cls_name = name.rpartition(".")
    if not module_name.startswith("torch.nn"):  # never import arbitrary code named in a config file
        raise ThawingError(f"unsupported Dense activation '{name}': only torch.nn modules are allowed")
    return getattr(importlib.import_module(module_name), cls_name)()


def _default_max_length(backbone: nn.Module, tokenizer) -> int:
    limits = [getattr(backbone.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return int(min(x for x in limits if x and x < 1_000_000) if any(limits) else 512)


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ThawingError(f"{path}: cannot read model file: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# saving


def save_encoder(encoder: Encoder, path: str | Path, prompts: dict[str, str] | None = None) -> Path:
    """Write `encoder` in sentence-transformers layout under `path` (which must not exist yet).

    Args:
        encoder: the encoder to save.
        path: a new folder.
        prompts: named prompts (thawing: each task's), so that `SentenceTransformer(path).encode(texts,
            prompt_name=name)` prefixes them as thawing does.
    """
    path = Path(path)
    path.mkdir(parents=True)
    with _no_bars():
        encoder.backbone.save_pretrained(path, safe_serialization=True)
    encoder.tokenizer.save_pretrained(path)
    st_config = {"max_seq_length": encoder.max_length, "do_lower_case": encoder.do_lower_case}
    _write_json(path / "sentence_bert_config.json", st_config)
    _write_json(path / ST_CONFIG, sentence_transformers_config(prompts or {}, encoder.declared))
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER}]
    pooling = {key: mode == encoder.pooling for mode, key in ST_POOLING_KEYS.items()}
    pooling.update(word_embedding_dimension=encoder.hidden_size, pooling_mode_mean_sqrt_len_tokens=False,
                   include_prompt=encoder.include_prompt)
    _write_json(path / "1_Pooling" / "config.json", pooling)
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING})
    for dense in encoder.projection or []:
        idx = len(modules)
        folder = path / f"{idx}_Dense"
        act = dense.activation
        _write_json(
            folder / "config.json",
            {
                "in_features": dense.linear.in_features,
                "out_features": dense.linear.out_features,
                "bias": dense.linear.bias is not None,
                "activation_function": f"{type(act).__module__}.{type(act).__name__}",
            },
        )
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in dense.state_dict().items()}, folder / "model.safetensors"
        )
        modules.append({"idx": idx, "name": str(idx), "path": folder.name, "type": ST_DENSE})
    if encoder.normalize:
        idx = len(modules)
        (path / f"{idx}_Normalize").mkdir()
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_Normalize", "type": ST_NORMALIZE})
    _write_json(path / "modules.json", modules)
    return path


def sentence_transformers_config(prompts: dict[str, str], declared: dict | None = None) -> dict:
    """config_sentence_transformers.json: the named prompts (the base model's, then each task's), none used by default
    (thawing adds a prompt only where a task asks for it), the base model's similarity function (cosine where it
    names none) and the versions that wrote it, as sentence-transformers itself records them."""
    declared = declared or {}
    import transformers

    versions = {"sentence_transformers": _installed("sentence-transformers"), "transformers": transformers.__version__,
                "pytorch": torch.__version__}
    return {
        "model_type": "SentenceTransformer",
        "__version__": {name: v for name, v in versions.items() if v is not None},
        "prompts": {**declared.get("prompts", {}), **prompts},
        "default_prompt_name": None,
        "similarity_fn_name": declared.get("similarity_fn_name", "cosine"),
    }


def _installed(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)  # its metadata, not an import: sentence-transformers is slow to import
    except PackageNotFoundError:
        return None


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
