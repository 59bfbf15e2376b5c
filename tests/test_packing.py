"""Packing several sentences into one row: placement, and packed outputs equal to padded ones in fp32.

Run: `.venv/bin/python -m pytest -q tests/test_packing.py`
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import SENTENCES

from thawing.config import HeadConfig
from thawing.model import packing
from thawing.model.loading import load_encoder
from thawing.model.multitask import MultiTaskModel, TaskSpec
from thawing.model.pooling import POOLERS
from thawing.model.runtime import apply, resolve

ENCODERS = ["tiny_bert_dir", "tiny_qwen2_dir"]


@pytest.fixture(params=["rows", "varlen"])
def mode(request, monkeypatch):
    """Each packing mode on its own. On CPU varlen's attention function computes densely: this checks the
    wiring (one row, restarting positions, sequence starts through transformers, unpacking), not the GPU kernel."""
    monkeypatch.setattr(packing, "MODES", (request.param,))
    monkeypatch.setattr(packing, "VARLEN_DEVICES", {"cpu", "cuda"})
    return request.param


def _load(path):
    encoder = load_encoder(str(path))
    encoder.backbone.config.attention_probs_dropout_prob = 0.0  # varlen refuses models that train with it
    return encoder


def test_first_fit_places_every_sentence_once_without_overflow():
    lengths = [5, 3, 9, 2, 2, 7, 1, 4]
    rows, offsets = packing.first_fit(lengths, 10)
    spans = {}
    for i, (row, start) in enumerate(zip(rows, offsets, strict=True)):
        spans.setdefault(row, []).append((start, start + lengths[i]))
    for row_spans in spans.values():
        row_spans.sort()
        assert row_spans[-1][1] <= 10
        assert all(a[1] <= b[0] for a, b in zip(row_spans, row_spans[1:], strict=False))  # no overlap
    assert len(spans) == 4  # 33 tokens need at least 4 rows of 10; first-fit decreasing finds 4


def _batch(encoder, texts=SENTENCES):
    return encoder.pad(encoder.token_ids(texts))


def _use_packing(encoder, batch, width=24, training=False, **options):
    """Resolve a CPU runtime that packs (the modes `packing.MODES` holds), checked on `batch`, and apply it."""
    runtime = resolve(encoder, device="cpu", precision="no", packing_=True, pack_width=width, training=training,
                      sample=lambda: (batch["input_ids"], batch["attention_mask"]), **options)
    apply(runtime, encoder)
    return runtime


# BERT with left padding is left out: its absolute positions then start after the padding, so its padded
# outputs depend on the padding and packing (which checks against them) rightly falls back.
@pytest.mark.parametrize(
    "fixture,side", [("tiny_bert_dir", "right"), ("tiny_qwen2_dir", "right"), ("tiny_qwen2_dir", "left")]
)
def test_packed_token_states_equal_padded_in_fp32(fixture, side, mode, request):
    encoder = _load(request.getfixturevalue(fixture)).eval()
    encoder.tokenizer.padding_side = side
    batch = _batch(encoder)
    with torch.no_grad():
        padded = encoder.token_states(**batch)
        runtime = _use_packing(encoder, batch)  # 24: narrower than the batch holds, several sentences per row
        packed = encoder.token_states(**batch)
    assert runtime.inference_packing == mode
    real = batch["attention_mask"].bool()
    assert packed.shape == padded.shape
    torch.testing.assert_close(packed[real], padded[real], atol=1e-5, rtol=0)
    for name, pool in POOLERS.items():
        if name == "cls" and side == "left":  # the first position is padding there: no sentence's state
            continue
        torch.testing.assert_close(
            pool(packed, batch["attention_mask"]), pool(padded, batch["attention_mask"]), atol=1e-5, rtol=0, msg=name
        )


@pytest.mark.parametrize("fixture", ENCODERS)
def test_packed_rows_hold_several_sentences(fixture, request):
    encoder = load_encoder(str(request.getfixturevalue(fixture)))
    batch = _batch(encoder)
    real_tokens = int(batch["attention_mask"].sum())
    rows = packing.pack(batch["input_ids"], batch["attention_mask"], 24, 0)
    assert rows.rows < len(SENTENCES)
    assert rows.input_ids.numel() == rows.rows * 24 >= real_tokens
    one = packing.pack(batch["input_ids"], batch["attention_mask"], None, 0)
    assert one.input_ids.shape == (1, real_tokens) and one.starts[-1] == real_tokens
    lengths = sorted(b - a for a, b in zip(one.starts, one.starts[1:], strict=False))
    assert lengths == sorted(batch["attention_mask"].sum(1).tolist())
    assert packing.is_causal(encoder.backbone) == (fixture == "tiny_qwen2_dir")


@pytest.mark.parametrize("fixture", ENCODERS)
@pytest.mark.parametrize("task_type", ["classification", "token-classification"])
def test_packed_gradients_equal_padded(fixture, task_type, mode, request):
    """The loss and every parameter's gradient through packed rows match the padded forward (eval mode: no dropout)."""
    encoder = _load(request.getfixturevalue(fixture))
    spec = TaskSpec(task_type, ["a", "b", "c"], HeadConfig().model_dump())
    model = MultiTaskModel(encoder, {"t": spec}).eval()
    batch = _batch(encoder)
    torch.manual_seed(0)
    shape = (len(SENTENCES),) if task_type == "classification" else tuple(batch["input_ids"].shape)
    labels = torch.randint(0, 3, shape).masked_fill(
        torch.zeros(shape, dtype=torch.bool) if task_type == "classification" else batch["attention_mask"] == 0, -100
    )

    def grads(width):
        if width:
            assert _use_packing(encoder, batch, width).inference_packing == mode
        model.zero_grad()
        loss = model.loss("t", model("t", batch["input_ids"], batch["attention_mask"]), labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_padded, padded = grads(None)
    loss_packed, packed = grads(24)
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=0)
    assert padded.keys() == packed.keys() and len(padded) > 10
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], atol=1e-5, rtol=1e-4, msg=name)


def test_wrong_mask_is_caught_and_falls_back(tiny_qwen2_dir, monkeypatch, caplog):
    """A bidirectional mask on a causal model changes the outputs: the check must notice and pad instead."""
    encoder = load_encoder(str(tiny_qwen2_dir)).eval()
    monkeypatch.setattr(packing, "MODES", ("rows",))
    monkeypatch.setattr(packing, "is_causal", lambda _backbone: False)
    batch = _batch(encoder)
    with torch.no_grad():
        padded = encoder.token_states(**batch)
        with caplog.at_level(logging.WARNING):
            runtime = _use_packing(encoder, batch)
        fallback = encoder.token_states(**batch)
    assert runtime.inference_packing is None
    assert sum("packing is off" in r.message for r in caplog.records) == 1  # said once
    assert "differ" in caplog.text
    torch.testing.assert_close(fallback, padded)


def test_unsupported_attention_falls_back(tiny_bert_dir, monkeypatch, caplog):
    encoder = load_encoder(str(tiny_bert_dir)).eval()
    monkeypatch.setattr(packing, "MASK_FORMATS", {"flash_attention_2": "none"})
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        runtime = _use_packing(encoder, _batch(encoder))
    assert runtime.inference_packing is None
    assert "takes no custom 4D mask" in caplog.text
    assert "varlen attention needs a GPU" in caplog.text  # on this CPU: both reasons, in one message


def test_varlen_refuses_attention_dropout(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(packing, "VARLEN_DEVICES", {"cpu", "cuda"})
    encoder = load_encoder(str(tiny_bert_dir))  # BERT trains with attention dropout 0.1
    assert "attention dropout" in packing.unsupported(encoder.backbone, "varlen", training=True)
    assert packing.unsupported(encoder.backbone, "rows", training=True) is None
    assert packing.unsupported(encoder.backbone, "varlen", training=False) is None  # no dropout at inference


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash varlen attention needs a CUDA GPU")
def test_flash_varlen_matches_dense_attention_on_gpu():
    assert packing.varlen_kernel_problem(torch.device("cuda")) is None


@pytest.mark.parametrize("fixture", ENCODERS)
def test_encode_with_packing_matches(fixture, mode, request):
    encoder = _load(request.getfixturevalue(fixture))
    plain = encoder.encode(SENTENCES * 5, batch_size=8)
    assert _use_packing(encoder, _batch(encoder), 32).inference_packing == mode
    packed = encoder.encode(SENTENCES * 5, batch_size=8)
    torch.testing.assert_close(torch.from_numpy(packed), torch.from_numpy(plain), atol=1e-5, rtol=0)


# Stand-ins for torch's varlen_attn take its parameters, by its names (read_varlen_signature reads them).
def _fake_varlen_new(
    q, k, v, cu_q, cu_k, max_q, max_k, *, return_aux=None, scale=None, window_size=(-1, -1), enable_gqa=False  # noqa: ARG001
):
    assert enable_gqa == (k.shape[1] != q.shape[1])
    return packing.dense_varlen(q, k, v, cu_q, tuple(window_size) == (-1, 0), scale)


def _fake_varlen_old(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):  # noqa: ARG001
    assert k.shape[1] == q.shape[1]  # no grouped-query support: heads must arrive repeated
    return packing.dense_varlen(q, k, v, cu_q, is_causal, None)  # always 1/sqrt(D)


@pytest.mark.parametrize("fake", [_fake_varlen_new, _fake_varlen_old])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_varlen_call_adapts_to_the_torch_signature(fake, causal, monkeypatch):
    """Scale, causality and grouped-query heads reach varlen_attn in whichever form the installed torch takes
    (a stand-in computes densely what the kernel would, so this runs on CPU)."""
    import torch.nn.attention.varlen as varlen_module

    monkeypatch.setattr(varlen_module, "varlen_attn", fake)
    monkeypatch.setattr(packing, "VARLEN_ARGS", {})
    packing.read_varlen_signature(fake)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(9, h, 8, generator=generator) for h in (4, 2, 2))
    cu = torch.tensor([0, 2, 7, 9], dtype=torch.int32)
    got = packing.flash_varlen(q, k, v, cu, 5, causal, 0.3)  # 0.3 is not 1/sqrt(8): the scale must be passed on
    torch.testing.assert_close(got, packing.dense_varlen(q, k, v, cu, causal, 0.3))
    # and dense varlen is attention within each sentence
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        kk, vv = packing.repeat_kv(q[a:b], k[a:b], v[a:b])
        alone = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1), is_causal=causal, scale=0.3
        ).transpose(0, 1)
        torch.testing.assert_close(got[a:b], alone)


class _WrongBackward(torch.autograd.Function):
    """Right forward, gradients off by a factor of two: a kernel whose backward is broken."""

    @staticmethod
    def forward(_ctx, x):
        return x.clone()

    @staticmethod
    def backward(_ctx, grad):
        return 2 * grad


@pytest.mark.parametrize("backward_ok", [True, False])
def test_kernel_self_test_checks_gradients(backward_ok, monkeypatch):
    """The self-test that decides whether flash varlen is used compares its gradients too, not only its output:
    training runs the kernel's backward (a stand-in plays the kernel, so this runs on CPU)."""
    import torch.nn.attention.varlen as varlen_module

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1), enable_gqa=False):
        out = _fake_varlen_new(
            q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa
        )
        return out if backward_ok else _WrongBackward.apply(out)

    monkeypatch.setattr(varlen_module, "varlen_attn", kernel)
    monkeypatch.setattr(packing, "VARLEN_ARGS", {})
    packing.read_varlen_signature(kernel)
    with torch.inference_mode():  # as under encode (measured on a GPU: it used to fail there)
        problem = packing.kernel_self_test(torch.device("cpu"))
    if backward_ok:
        assert problem is None
    else:
        assert "disagrees" in problem


def test_auto_compile_waits_for_packed_training(tiny_qwen2_dir, monkeypatch):
    """Auto compile compiles the layers when training runs packed with varlen, not for evaluation alone and not for
    padded training, where compiled layers measured slower on the GPU."""
    monkeypatch.setattr(packing, "VARLEN_DEVICES", {"cpu", "cuda"})
    monkeypatch.setattr(packing, "MODES", ("varlen",))
    encoder = _load(tiny_qwen2_dir)
    monkeypatch.setattr(encoder, "compile_layers", lambda enabled=True: None)  # noqa: ARG005 (its signature) the decision, not the compile
    batch = _batch(encoder, ["who won the game ?", "the movie was great", "where is paris ?"])
    runtime = _use_packing(encoder, batch, 64, training=True)
    assert (runtime.packing, runtime.inference_packing, runtime.compile) == ("varlen", "varlen", True)
    assert _use_packing(encoder, batch, 64, training=False).compile is False  # inference only: nothing compiled
    padded = _load(tiny_qwen2_dir)
    padded.backbone.config.attention_probs_dropout_prob = padded.backbone.config.attention_dropout = 0.1
    runtime = _use_packing(padded, batch, 64, training=True)
    assert (runtime.packing, runtime.inference_packing, runtime.compile) == (None, "varlen", False)  # dropout
