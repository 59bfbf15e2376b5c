"""The sentence encoder: a transformers backbone, pooling, an optional projection, optional L2 norm.

`Encoder` is an `nn.Module` whose parameters split into named groups (see `groups.py`), so freezing
and learning rates can speak about `embeddings`, `layers.3` or `projection`. Loading and saving in
sentence-transformers layout live in `loading.py`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from thawing.data.batching import sorted_batches, to_device
from thawing.distributed import map_batches
from thawing.errors import ThawingError
from thawing.model import packing
from thawing.model.groups import find_layers
from thawing.model.pooling import POOLERS

log = logging.getLogger(__name__)


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
        include_prompt: pool a prompt's tokens too (sentence-transformers' Pooling option; false: no prompts here).
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
        include_prompt: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLERS:
            raise ValueError(f"unknown pooling '{pooling}'; choose one of {', '.join(POOLERS)}")
        self.backbone = backbone
        if getattr(backbone.config, "use_cache", False):
            # A key/value cache serves generation; an encoder never generates, and building one on every forward
            # costs time and, under torch.compile, a recompile per layer.
            backbone.config.use_cache = False
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.projection = projection if projection is not None and len(projection) else None
        self.normalize = normalize
        self.max_length = max_length
        self.do_lower_case = do_lower_case
        # sentence-transformers' Pooling option: false leaves a prompt's tokens out of the pooling. thawing pools
        # every token, so it uses no prompt with such a model (`prepare_texts`), and keeps the option when it saves.
        self.include_prompt = include_prompt
        self.declared: dict = {}  # what the model's own files declare beyond this (prompts, similarity; loading.py)
        # How batches reach the backbone: padded (to a multiple) or packed, per context. Set once, from the resolved
        # runtime (`thawing.model.runtime.apply`); the default is plain padding.
        self.layout = packing.BatchLayout()

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

    def compile_layers(self, enabled: bool = True) -> None:
        """torch.compile each transformer layer in place, or (enabled=False) go back to eager.

        The layers share one forward, so torch compiles a single layer's graph and reuses it for all of them:
        the compile time of one layer, not of the whole stack. Parameter names, groups and saving are unchanged.
        Shapes stay few: packed rows have one width and mark the batch dimension dynamic; padded lengths can be
        rounded up (`pad_multiple`); torch marks any other dimension dynamic the first time it changes.
        """
        _, layers = find_layers(self.backbone)
        for layer in layers:
            if enabled:
                layer.compile(dynamic=None)
            else:
                layer._compiled_call_impl = None

    # ------------------------------------------------------------------------------ tokenizing

    def prepare_texts(self, texts: Sequence[str], prompt: str | None = None) -> list[str]:
        """Prefix the prompt and normalize whitespace and case exactly as sentence-transformers does."""
        if prompt and not self.include_prompt:
            raise ThawingError("this model's pooling leaves prompt tokens out (include_prompt: false in its Pooling "
                               "config), which thawing does not do: its embeddings would differ; use no prompt")
        prompt = prompt or ""
        out = [(prompt + str(t)).strip() for t in texts]
        return [t.lower() for t in out] if self.do_lower_case else out

    def token_ids(self, texts: Sequence[str], prompt: str | None = None) -> list[list[int]]:
        """Token ids without padding, for length-sorted batching."""
        enc = self.tokenizer(
            self.prepare_texts(texts, prompt), truncation="longest_first", max_length=self.max_length
        )
        return enc["input_ids"]

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad token-id lists into `input_ids` and `attention_mask`, on the tokenizer's padding side."""
        length = max(len(x) for x in ids)
        multiple = self.layout.pad_multiple
        length = -(-length // multiple) * multiple
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

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: Sequence[int] | None = None,
                     **extra) -> torch.Tensor:
        """The backbone's last hidden states, (B, T, H): computed without padding when the layout packs this context
        (training or inference, see `packing.BatchLayout`), returned in the padded layout either way. `lengths`: each
        sentence's real tokens, where the caller knows them on the host (packing then never reads the mask back)."""
        mode = self.layout.mode(self.backbone.training)
        if mode and not extra:
            return self.packed_states(input_ids, attention_mask, mode, self.layout.width, lengths)
        mask = self.backbone_mask(attention_mask, lengths)
        return self.backbone(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state

    def backbone_mask(self, attention_mask: torch.Tensor, lengths: Sequence[int] | None = None):
        """The attention mask a padded forward hands the backbone. With `lengths` (known on the host): none where
        nothing is padding, else a 4D mask built on the device (`packing.padding_mask`), so that transformers need
        not read the mask back to see whether it pads; without, the 2D mask as it is."""
        impl = self.backbone.config._attn_implementation
        if lengths is None or impl not in packing.MASK_FORMATS:
            return attention_mask
        if min(lengths) == attention_mask.shape[1]:
            return None
        dtype = next(self.backbone.parameters()).dtype
        return packing.padding_mask(attention_mask, packing.is_causal(self.backbone), packing.MASK_FORMATS[impl],
                                    dtype)

    def packed_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str,
                      width: int | None = None, lengths: Sequence[int] | None = None) -> torch.Tensor:
        """The backbone's last states with the batch packed: one row of every real token (varlen), or first-fit rows
        of `width` tokens (rows); returned in the padded layout."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        mark = torch._dynamo.maybe_mark_dynamic  # under torch.compile, one graph for every batch size
        left = self.tokenizer.padding_side == "left" if lengths is not None else None
        if mode == "varlen":
            packed = packing.pack(input_ids, attention_mask, None, pad_id, lengths, left)
            cu = to_device(torch.tensor(packed.starts, dtype=torch.int32), input_ids.device)
            longest = max(self.max_length, max(b - a for a, b in zip(packed.starts, packed.starts[1:], strict=False)))
            for tensor, dim in ((packed.input_ids, 1), (packed.position_ids, 1), (cu, 0)):
                mark(tensor, dim)
            with packing.attention_implementation(self.backbone, packing.VARLEN):
                states = self.backbone(input_ids=packed.input_ids, position_ids=packed.position_ids, cu_seq_lens_q=cu,
                                       cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest).last_hidden_state
        else:
            packed = packing.pack(input_ids, attention_mask, width or self.max_length, pad_id, lengths, left)
            impl = self.backbone.config._attn_implementation
            dtype = next(self.backbone.parameters()).dtype
            mask = packing.block_mask(packed, packing.is_causal(self.backbone), packing.MASK_FORMATS[impl], dtype)
            for tensor in (packed.input_ids, mask, packed.position_ids):
                mark(tensor, 0)
            states = self.backbone(input_ids=packed.input_ids, attention_mask=mask,
                                   position_ids=packed.position_ids).last_hidden_state
        return packing.unpack(states, packed)

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

        Texts are tokenized once and batched in order of token length, so each batch pads to almost nothing; the
        batches run in eval mode without gradients. With `max_tokens`, a batch holds as many texts as fit that many
        padded tokens instead of `batch_size` texts (the resolved runtime's `inference_max_tokens` on a GPU).

        Example:
            >>> vectors = encoder.encode(["A question?", "A statement."])  # doctest: +SKIP
            >>> vectors.shape
            (2, 384)
        """
        ids = self.token_ids(texts, prompt)
        device = self.device
        batches = sorted_batches([len(x) for x in ids], batch_size, max_tokens)
        out = np.empty((len(ids), self.embedding_size), dtype=np.float32)

        def compute(chunk: list[int]) -> np.ndarray:
            batch = {k: v.to(device) for k, v in self.pad([ids[i] for i in chunk]).items()}
            return self.pool(self.token_states(**batch), batch["attention_mask"]).float().cpu().numpy()

        with evaluating(self):  # with several processes, each encodes its share of the batches; all get every row
            for chunk, rows in map_batches(batches, compute, "Encoding", show_progress):
                out[chunk] = rows
        return out


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
