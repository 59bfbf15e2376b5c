"""Packing: the sentences of a batch run without padding, each attending only to itself.

A padded batch of short sentences spends much of its compute on padding, and its shape changes with every
batch. Packed, the real tokens are laid end to end and attention is kept inside each sentence, in one of two ways:

- "varlen": every token in one row, and flash attention over variable-length sequences
  (`torch.nn.attention.varlen`, CUDA, half precision), told where each sentence starts. No padding at all, no
  mask. Registered as a transformers attention function and switched on only for the packed call.
- "rows": rows of `width` tokens filled first-fit, with a 4D block-diagonal mask (rows, 1, width, width) that
  transformers passes straight to its "sdpa" and "eager" attention. Works on any device; the row width is fixed,
  so only the row count varies from batch to batch (what torch.compile needs to compile once).

Either way the backbone runs its own forward with position ids that restart at every sentence, and the states
are gathered back into the caller's padded layout, so pooling, heads and labels see exactly what the padded
forward gives. `choose` picks a mode once per context (training, inference), trying varlen, then rows, each
compared with the padded forward on a real batch (`check`), else padding; `thawing.model.runtime.resolve` calls it and
hands the encoder the resulting `BatchLayout`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from thawing.data.batching import to_device

# The mask format each attention implementation expects in rows mode: sdpa takes a boolean "may attend" mask,
# eager adds the mask to the attention scores.
MASK_FORMATS = {"sdpa": "bool", "eager": "additive"}
MODES = ("varlen", "rows")  # in order of preference
VARLEN = "thawing_varlen"  # the name our attention function is registered under in transformers
VARLEN_DEVICES = {"cuda"}  # where flash varlen runs; elsewhere the function computes the same thing densely


@dataclass(frozen=True)
class BatchLayout:
    """How the encoder lays out batches for the backbone: padded to a multiple of `pad_multiple`, or packed with
    `training` / `inference` mode ("varlen", "rows" or None for padded) in those contexts, rows `width` tokens wide."""

    training: str | None = None
    inference: str | None = None
    width: int | None = None
    pad_multiple: int = 1

    def mode(self, training: bool) -> str | None:
        return self.training if training else self.inference


@dataclass
class Packed:
    """A padded batch (N, L) rearranged into rows (R, W); `index[i, j]` is where token j of sentence i went."""

    input_ids: torch.Tensor  # (R, W)
    position_ids: torch.Tensor  # (R, W), restarting at 0 for each sentence
    segment: torch.Tensor  # (R, W): the sentence each position holds, -1 for padding
    index: torch.Tensor  # (N, L) flat positions into R * W (0 at padding)
    real: torch.Tensor  # (N, L) bool: the caller's attention mask
    starts: list[int]  # one row only: where each sentence starts, in row order, then the total

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])


def first_fit(lengths: list[int], width: int) -> tuple[list[int], list[int]]:
    """Row and offset of each sentence: first-fit decreasing, the longest sentences placed first.

    Every length must be at most `width` (`pack` widens the rows for a longer sentence).
    """
    rows, offsets = [0] * len(lengths), [0] * len(lengths)
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        row = next((r for r, taken in enumerate(used) if taken + n <= width), None)
        if row is None:
            row = len(used)
            used.append(0)
        rows[i], offsets[i] = row, used[row]
        used[row] += n
    return rows, offsets


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int | None, pad_id: int,
         lengths: Sequence[int] | None = None, left: bool | None = None) -> Packed:
    """Pack a padded batch (either padding side) into rows of `width` tokens, or with `width=None` into one row
    that holds exactly the real tokens.

    The layout is planned on the host from the sentences' lengths and padding side, and its indices reach the
    device in one copy each, without reading anything back: training passes `lengths` and `left` (it knows them
    from the token ids on the host); otherwise they are read from the mask (one wait for the device)."""
    if lengths is None or left is None:
        host = attention_mask.cpu().bool()
        lengths = host.sum(dim=1).tolist()
        left = bool(host[:, -1].all()) and not bool(host[:, 0].all())  # padding only ever on the left
    n, length = attention_mask.shape
    width = sum(lengths) if width is None else max(width, max(lengths))
    rows, offsets = first_fit(list(lengths), width)
    sizes = np.asarray(lengths, dtype=np.int64)
    sentence = np.repeat(np.arange(n), sizes)  # each real token's sentence, in the caller's order
    within = np.arange(len(sentence)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # its position inside it
    column = within + (length - sizes)[sentence] if left else within
    dest = (np.asarray(rows, dtype=np.int64) * width + np.asarray(offsets, dtype=np.int64))[sentence] + within
    index = np.zeros((n, length), dtype=np.int64)
    index[sentence, column] = dest
    n_rows = max(rows) + 1
    flat_positions = np.zeros(n_rows * width, dtype=np.int64)
    flat_positions[dest] = within
    flat_segment = np.full(n_rows * width, -1, dtype=np.int64)
    flat_segment[dest] = sentence
    device = input_ids.device
    dest_t, source = (to_device(torch.from_numpy(a), device) for a in (dest, sentence * length + column))
    flat_ids = torch.full((n_rows * width,), pad_id, dtype=input_ids.dtype, device=device)
    flat_ids[dest_t] = input_ids.reshape(-1)[source]
    positions, segment = (to_device(torch.from_numpy(a), device).view(n_rows, width)
                          for a in (flat_positions, flat_segment))
    starts = sorted(offsets) + [width] if n_rows == 1 else []
    return Packed(flat_ids.view(n_rows, width), positions, segment, to_device(torch.from_numpy(index), device),
                  attention_mask.bool(), starts)


def block_mask(packed: Packed, causal: bool, mask_format: str, dtype: torch.dtype) -> torch.Tensor:
    """Rows mode's 4D mask (R, 1, W, W): a token attends within its own sentence (padding: within the padding,
    which keeps its softmax finite and is never read)."""
    segment = packed.segment
    allowed = segment[:, :, None] == segment[:, None, :]
    if causal:
        width = segment.shape[1]
        allowed &= torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    allowed = allowed[:, None]
    if mask_format == "additive":
        return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def padding_mask(attention_mask: torch.Tensor, causal: bool, mask_format: str, dtype: torch.dtype) -> torch.Tensor:
    """A padded batch's 4D attention mask, built on the device without reading it: (B, 1, 1, T) real keys, or
    causal (B, 1, T, T) where padding attends to padding (its softmax stays finite; its states are never read). Given
    a 2D mask, transformers checks whether it holds any padding, which makes the host wait for the device."""
    real = attention_mask.bool()
    if causal:
        width = real.shape[1]
        allowed = (real[:, :, None] == real[:, None, :]) & torch.ones(width, width, dtype=torch.bool,
                                                                       device=real.device).tril()
        allowed = allowed[:, None]
    else:
        allowed = real[:, None, None, :]
    if mask_format == "additive":
        return torch.zeros(allowed.shape, dtype=dtype, device=real.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def unpack(states: torch.Tensor, packed: Packed) -> torch.Tensor:
    """Packed states (R, W, H) back to the caller's padded layout (N, L, H), zeros at padding."""
    flat = states.reshape(-1, states.shape[-1])
    return flat[packed.index].masked_fill(~packed.real[..., None], 0.0)


def is_causal(backbone: nn.Module) -> bool:
    """Whether the backbone's self-attention is causal (transformers marks attention modules with `is_causal`)."""
    return any(getattr(m, "is_causal", False) for m in backbone.modules() if m is not backbone)


def unsupported(backbone: nn.Module, mode: str, training: bool = False, half: bool = False) -> str | None:
    """Why `mode` cannot run on this backbone, or None, in a context: `training` (dropout active) and `half`
    (bf16/fp16 autocast or weights)."""
    config = getattr(backbone, "config", None)
    if mode == "rows":
        impl = getattr(config, "_attn_implementation", None)
        if impl not in MASK_FORMATS:
            supported = ", ".join(MASK_FORMATS)
            return f"attention implementation '{impl}' takes no custom 4D mask (rows packing supports {supported})"
        return None
    weights = next(backbone.parameters())
    device = weights.device
    if device.type not in VARLEN_DEVICES:
        return f"varlen attention needs a GPU (the model is on {device.type})"
    half = half or weights.dtype in (torch.float16, torch.bfloat16)
    if device.type == "cuda" and not half:  # in fp32 the dense fallback would attend over the whole row
        return "varlen attention runs in bf16/fp16 (mixed precision or half weights); this forward is fp32"
    # Flash varlen has no attention dropout: a model that trains with it would silently train differently.
    dropout = getattr(config, "attention_dropout", None) or getattr(config, "attention_probs_dropout_prob", 0.0)
    if dropout and training:
        return f"varlen attention has no attention dropout (the model uses {dropout})"
    heads = getattr(config, "num_attention_heads", 4)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 64 * heads) // heads
    return varlen_kernel_problem(device, heads, kv_heads, head_dim)


# ---------------------------------------------------------------------------------------------- varlen


VARLEN_ARGS: dict[str, bool] = {}  # which keywords this torch's varlen_attn takes (its signature has changed)


def varlen_kernel_problem(device: torch.device, heads: int = 4, kv_heads: int = 2, head_dim: int = 64) -> str | None:
    """None when flash varlen imports, registers with transformers and matches dense attention on a small case
    of the model's head layout (the kernel supports some head sizes only)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
        from transformers import AttentionInterface
    except ImportError as exc:
        return f"this torch or transformers has no varlen attention ({exc})"
    read_varlen_signature(varlen_attn)
    AttentionInterface.register(VARLEN, varlen_attention)
    if device.type != "cuda":  # CPU (tests): varlen_attention computes densely, no kernel to try
        return None
    return kernel_self_test(device, heads, kv_heads, head_dim)


def kernel_self_test(device: torch.device, heads: int = 4, kv_heads: int = 2, head_dim: int = 64) -> str | None:
    """Flash varlen against dense attention, outputs and gradients (training runs the kernel's backward)."""
    # Callers may be under no_grad or inference_mode (encode): gradients are switched back on for the test.
    with torch.inference_mode(False), torch.enable_grad():
        return compare_with_dense(device, heads, kv_heads, head_dim)


def compare_with_dense(device: torch.device, heads: int, kv_heads: int, head_dim: int) -> str | None:
    generator = torch.Generator(device="cpu").manual_seed(0)
    shapes = (heads, kv_heads, kv_heads)
    q, k, v = (
        torch.randn(11, h, head_dim, generator=generator).to(device, torch.bfloat16).requires_grad_() for h in shapes
    )
    cu = torch.tensor([0, 3, 11], dtype=torch.int32, device=device)
    for causal in (False, True):
        try:
            fast_out = flash_varlen(q, k, v, cu, 8, causal, 0.125)
            fast = [fast_out.detach().float(), *torch.autograd.grad(fast_out.float().square().sum(), (q, k, v))]
        except Exception as exc:  # noqa: BLE001 (a torch whose kernel rejects this GPU, head size or these arguments)
            return f"flash varlen attention failed ({type(exc).__name__}: {exc})"
        # The reference runs in fp32: bf16 rounding (~1e-2) stays well inside the tolerance, while a wrong
        # scale, mask or backward is off by order one.
        exact = dense_varlen(q.float(), k.float(), v.float(), cu, causal, 0.125)
        dense = [exact.detach(), *torch.autograd.grad(exact.square().sum(), (q, k, v))]
        if any((a.float() - b.float()).abs().max() > 5e-2 * float(b.abs().max())
               for a, b in zip(fast, dense, strict=True)):
            return "flash varlen attention disagrees with dense attention on a test case"
    return None


def read_varlen_signature(varlen_attn) -> None:
    """Note which keywords the installed `varlen_attn` takes: torch 2.10 has `is_causal` and no `scale`, later
    versions `scale` and `window_size`, later still `enable_gqa`."""
    params = inspect.signature(varlen_attn).parameters
    VARLEN_ARGS.update(scale="scale" in params, is_causal="is_causal" in params, enable_gqa="enable_gqa" in params)


def varlen_attention(
    module,
    query,
    key,
    value,
    attention_mask,  # noqa: ARG001 (transformers' attention-function signature, as dropout and kwargs)
    dropout: float = 0.0,  # noqa: ARG001
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,  # noqa: ARG001
):
    """A transformers attention function over one packed row: query (1, Hq, T, D) to output (1, T, Hq, D)."""
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, heads, D)
    causal = bool(getattr(module, "is_causal", False))
    if q.is_cuda and q.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        # Under autocast, rotary embeddings leave queries and keys in the fp32 of the residual stream. Autocast
        # casts SDPA's inputs itself, not a custom kernel's: without this the fp32 branch below would build a
        # tokens x tokens mask for the whole packed batch (measured: out of memory at 16k tokens).
        q, k, v = (x.to(torch.get_autocast_dtype("cuda")) for x in (q, k, v))
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = flash_varlen(q, k, v, cu_seq_lens_q, max_length_q, causal, scaling)
    else:  # fp32 (the correctness check) or CPU (tests): the same attention, computed densely
        out = dense_varlen(q, k, v, cu_seq_lens_q, causal, scaling)
    return out.unsqueeze(0), None


def flash_varlen(q, k, v, cu: torch.Tensor, max_len: int, causal: bool, scale: float | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    extra: dict = {}
    if VARLEN_ARGS.get("enable_gqa"):
        extra["enable_gqa"] = k.shape[1] != q.shape[1]
    else:
        k, v = repeat_kv(q, k, v)
    if VARLEN_ARGS.get("scale"):
        extra["scale"] = scale
    elif scale is not None:  # older torch: always 1/sqrt(D), so fold the model's scale into the queries
        q = q * (scale * q.shape[-1] ** 0.5)
    if VARLEN_ARGS.get("is_causal"):
        extra["is_causal"] = causal
    elif causal:
        extra["window_size"] = (-1, 0)  # no key to the right: causal
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **extra)


def dense_varlen(q, k, v, cu: torch.Tensor, causal: bool, scale: float | None) -> torch.Tensor:
    k, v = repeat_kv(q, k, v)
    positions = torch.arange(q.shape[0], device=q.device)
    segment = torch.searchsorted(cu[1:].to(torch.long), positions, right=True)
    allowed = segment[:, None] == segment[None, :]
    if causal:
        allowed &= positions[None, :] <= positions[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed, scale=scale
    )
    return out.transpose(0, 1)


def repeat_kv(q, k, v):
    """Grouped-query attention: each query head gets its key/value head."""
    if k.shape[1] == q.shape[1]:
        return k, v
    groups = q.shape[1] // k.shape[1]
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


@contextlib.contextmanager
def attention_implementation(backbone: nn.Module, name: str) -> Iterator[None]:
    """Inside the block the backbone's attention modules call the attention function registered as `name`."""
    config = backbone.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


# ---------------------------------------------------------------------------------------------- choice


def choose(
    encoder,
    modes: tuple[str, ...],
    training: bool,
    half: bool,
    width: int | None,
    sample: tuple[torch.Tensor, torch.Tensor],
) -> tuple[str | None, list[str]]:
    """The first of `modes` that runs on this backbone in this context and gives the padded forward's states on
    `sample` (a real batch), and why each mode before it was passed over. None: pad."""
    reasons = []
    for mode in modes:
        reason = unsupported(encoder.backbone, mode, training, half) or check(
            encoder.backbone, functools.partial(encoder.packed_states, mode=mode, width=width), *sample
        )
        if reason is None:
            return mode, reasons
        reasons.append(f"{mode}: {reason}")
    return None, reasons


# ---------------------------------------------------------------------------------------------- check


@torch.no_grad()
def check(backbone: nn.Module, packed_forward, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str | None:
    """Why packing must not be used, or None: compares packed with padded states on one real batch.

    Runs in eval mode without autocast, so the only differences left are the order of floating-point sums:
    relative 1e-4 in fp32 (the tests hold 1e-5), looser for half-precision weights. (Varlen's flash kernel
    runs only in half precision; `unsupported` compares it with dense attention on its own.)
    """
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        # Eager even where layers are compiled: this one comparison is not worth two throwaway graphs.
        with torch.autocast(device_type=input_ids.device.type, enabled=False), torch.compiler.set_stance("force_eager"):
            padded = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            packed = packed_forward(input_ids, attention_mask)
    except Exception as exc:  # noqa: BLE001 (an architecture that rejects 4D masks, position ids or attention keywords)
        return f"packed forward failed ({type(exc).__name__}: {exc})"
    finally:
        for m, training in modes.items():
            m.training = training
    real = attention_mask.bool()
    scale = float(padded[real].abs().max()) or 1.0
    error = float((padded[real].float() - packed[real].float()).abs().max()) / scale
    tolerance = 1e-4 if padded.dtype == torch.float32 else 3e-2
    if error > tolerance:
        return f"packed states differ from padded ones by {error:.1e} (relative; tolerance {tolerance:.0e})"
    return None
