"""The sentence encoder: a transformers backbone, pooling, an optional projection, optional L2 norm.

`Encoder` is an `nn.Module` whose parameters split into named groups (see `groups.py`), so freezing
and learning rates can speak about `embeddings`, `layers.3` or `projection`. Loading and saving in
sentence-transformers layout live in `loading.py`.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thawing.model.pooling import POOLERS


class Dense(nn.Module):
    """A sentence-transformers Dense module: Linear then activation (stella uses Identity)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


class Encoder(nn.Module):
    """Text in, token states and sentence embeddings out.

    Args:
        backbone: a transformers base model (BertModel, Qwen2Model, ...).
        tokenizer: its tokenizer.
        pooling: one of `POOLERS` ("mean", "cls", "last", "max").
        projection: Dense modules applied after pooling (stella: 1536 -> 1024), or None.
        normalize: L2-normalize the sentence embedding.
        max_length: truncation length in tokens.
        do_lower_case: lower-case texts before tokenizing (a sentence-transformers option).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: str = "mean",
        projection: nn.Sequential | None = None,
        normalize: bool = False,
        max_length: int = 512,
        do_lower_case: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLERS:
            raise ValueError(f"unknown pooling '{pooling}'; choose one of {', '.join(POOLERS)}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.projection = projection if projection is not None and len(projection) else None
        self.normalize = normalize
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        self.pad_multiple = 1  # pad batches to a multiple of this (bounded shapes for torch.compile)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def embedding_size(self) -> int:
        if self.projection is None:
            return self.hidden_size
        return int(self.projection[-1].linear.out_features)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------ tokenizing

    def prepare_texts(self, texts: Sequence[str], prompt: str | None = None) -> list[str]:
        """Prefix the prompt and normalize whitespace and case exactly as sentence-transformers does."""
        prompt = prompt or ""
        out = [(prompt + str(t)).strip() for t in texts]
        return [t.lower() for t in out] if self.do_lower_case else out

    def tokenize(self, texts: Sequence[str], prompt: str | None = None) -> dict[str, torch.Tensor]:
        """Tokenize and pad one batch to its longest member."""
        return dict(
            self.tokenizer(
                self.prepare_texts(texts, prompt),
                padding=True,
                truncation="longest_first",
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    def token_ids(self, texts: Sequence[str], prompt: str | None = None) -> list[list[int]]:
        """Token ids without padding, for length-sorted batching."""
        enc = self.tokenizer(
            self.prepare_texts(texts, prompt), truncation="longest_first", max_length=self.max_length
        )
        return enc["input_ids"]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad token-id lists into `input_ids` and `attention_mask`, on the tokenizer's padding side."""
        length = max(len(x) for x in ids)
        length = -(-length // self.pad_multiple) * self.pad_multiple
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for row, seq in enumerate(ids):
            span = slice(length - len(seq), length) if left else slice(0, len(seq))
            input_ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ------------------------------------------------------------------------------ forward

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """The backbone's last hidden states, (B, T, H)."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooling, projection and normalization: (B, T, H) -> (B, D)."""
        pooled = POOLERS[self.pooling](states, attention_mask)
        if self.projection is not None:
            pooled = self.projection(pooled)
        if self.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> dict[str, torch.Tensor]:
        states = self.token_states(input_ids, attention_mask, **extra)
        return {"token_states": states, "sentence": self.pool(states, attention_mask)}

    # ------------------------------------------------------------------------------ encode

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        prompt: str | None = None,
        show_progress: bool | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed texts; returns float32 (N, D) in input order.

        Texts are tokenized once and batched in order of token length, so each batch pads to
        almost nothing; the batches run in eval mode without gradients. With `max_tokens`, a batch holds as
        many texts as fit that many padded tokens instead of `batch_size` texts.

        Example:
            >>> vectors = encoder.encode(["A question?", "A statement."])  # doctest: +SKIP
            >>> vectors.shape
            (2, 384)
        """
        ids = self.token_ids(texts, prompt)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(ids), self.embedding_size), dtype=np.float32)
        device = self.device
        with evaluating(self):
            for chunk in progress(_chunks(order, [len(x) for x in ids], batch_size, max_tokens), "Encoding", show_progress):
                batch = {k: v.to(device) for k, v in self.pad([ids[i] for i in chunk]).items()}
                sentence = self.pool(self.token_states(**batch), batch["attention_mask"])
                out[chunk] = sentence.float().cpu().numpy()
        return out


def _chunks(order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive batches of `order` (longest first): `batch_size` items, or up to `max_tokens` padded tokens."""
    if not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunks: list[list[int]] = []
    for i in order:
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards every submodule gets back its own flag, so parts that a
    stage froze (and put in eval mode) stay in eval mode, which `module.train()` would undo."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training


def progress(items: Sequence, label: str, enabled: bool | None = None) -> Iterator:
    """Iterate with a progress bar on an interactive terminal when there are many items (or when asked)."""
    if enabled is None:
        enabled = len(items) >= 64 and sys.stderr.isatty()
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)
