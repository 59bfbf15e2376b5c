"""Encoder loading, parameter groups, pooling and parity with sentence-transformers.

Run: `.venv/bin/python -m pytest -q tests/test_encoder.py`
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SENTENCES
from sentence_transformers import SentenceTransformer

from thawing.errors import ModelNotFoundError, ThawingError
from thawing.model.groups import parameter_groups
from thawing.model.loading import load_encoder, save_encoder
from thawing.model.pooling import POOLERS


def _st_encode(path, texts, **kwargs) -> np.ndarray:
    return SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True, **kwargs)


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_qwen2_dir"])
def test_encode_matches_sentence_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    encoder = load_encoder(str(path))
    ours = encoder.encode(SENTENCES, batch_size=4)
    assert ours.dtype == np.float32 and ours.shape == (len(SENTENCES), encoder.embedding_size)
    np.testing.assert_allclose(ours, _st_encode(path, SENTENCES), atol=1e-5, rtol=0)


def test_prompt_is_prefixed_like_sentence_transformers(tiny_qwen2_dir):
    encoder = load_encoder(str(tiny_qwen2_dir))
    prompt = "which question : "
    ours = encoder.encode(SENTENCES, prompt=prompt)
    np.testing.assert_allclose(ours, _st_encode(tiny_qwen2_dir, SENTENCES, prompt=prompt), atol=1e-5, rtol=0)
    assert np.abs(ours - encoder.encode(SENTENCES)).max() > 1e-3  # the prompt really changed something


def test_tiny_tokenizers_know_their_words(tiny_bert_dir, tiny_qwen2_dir):
    for path in (tiny_bert_dir, tiny_qwen2_dir):
        tokenizer = load_encoder(str(path)).tokenizer
        assert tokenizer.unk_token_id not in tokenizer(SENTENCES[0])["input_ids"]


def test_layouts_are_read(tiny_bert_dir, tiny_qwen2_dir):
    bert = load_encoder(str(tiny_bert_dir))
    assert (bert.pooling, bert.normalize, bert.projection, bert.max_length) == ("mean", True, None, 48)
    qwen = load_encoder(str(tiny_qwen2_dir))
    assert (qwen.pooling, qwen.normalize, qwen.embedding_size) == ("mean", False, 24)
    np.testing.assert_allclose(np.linalg.norm(bert.encode(SENTENCES), axis=1), 1.0, atol=1e-5)


def test_plain_transformers_model_defaults_to_mean_pooling(tiny_bert_dir):
    encoder = load_encoder(str(tiny_bert_dir.parent / "hf"))
    assert (encoder.pooling, encoder.normalize, encoder.projection) == ("mean", False, None)
    assert encoder.encode(SENTENCES[:2]).shape == (2, 32)


def test_groups_bert(tiny_bert_dir):
    groups = parameter_groups(load_encoder(str(tiny_bert_dir)))
    assert list(groups) == ["embeddings", "layers.0", "layers.1", "pooler"]
    assert all(name.startswith("backbone.embeddings.") for name, _ in groups["embeddings"])
    assert all(".layer.1." in name for name, _ in groups["layers.1"])


def test_groups_qwen2_with_projection(tiny_qwen2_dir):
    encoder = load_encoder(str(tiny_qwen2_dir))
    groups = parameter_groups(encoder)
    assert list(groups) == ["embeddings", "layers.0", "layers.1", "layers.2", "norm", "projection"]
    assert [n for n, _ in groups["norm"]] == ["backbone.norm.weight"]
    assert [n for n, _ in groups["projection"]] == ["projection.0.linear.weight", "projection.0.linear.bias"]
    counted = sum(p.numel() for members in groups.values() for _, p in members)
    assert counted == sum(p.numel() for p in encoder.parameters())


def test_groups_reject_a_parameter_outside_every_group(tiny_bert_dir):
    encoder = load_encoder(str(tiny_bert_dir))
    encoder.stray = torch.nn.Linear(2, 2)  # a parameter no group claims
    with pytest.raises(AssertionError, match="partition"):
        parameter_groups(encoder)


@pytest.mark.parametrize("pooling", ["cls", "last", "max"])
def test_pooling_modes(tiny_qwen2_dir, pooling):
    encoder = load_encoder(str(tiny_qwen2_dir), pooling=pooling)
    batch = encoder.pad(encoder.token_ids(SENTENCES))
    with torch.no_grad():
        states = encoder.token_states(**batch)
        pooled = POOLERS[pooling](states, batch["attention_mask"])
    lengths = batch["attention_mask"].sum(1)
    if pooling == "cls":
        torch.testing.assert_close(pooled, states[:, 0])
    if pooling == "last":
        torch.testing.assert_close(pooled, states[torch.arange(len(SENTENCES)), lengths - 1])
    # Each sentence alone (no padding) gives the same vector: padding never leaks into pooling.
    alone = np.stack([encoder.encode([s])[0] for s in SENTENCES])
    np.testing.assert_allclose(encoder.encode(SENTENCES, batch_size=3), alone, atol=1e-5, rtol=0)


def test_the_config_offers_every_pooler_and_max_pooling_saves_for_sentence_transformers(tiny_qwen2_dir, tmp_path):
    from typing import get_args

    from thawing.config import ModelConfig

    literal = get_args(ModelConfig.model_fields["pooling"].annotation)[0]
    assert set(get_args(literal)) == set(POOLERS)  # model.pooling accepts exactly what the encoder can run
    encoder = load_encoder(str(tiny_qwen2_dir), pooling=ModelConfig(pooling="max").pooling)
    saved = save_encoder(encoder, tmp_path / "max")
    np.testing.assert_allclose(_st_encode(saved, SENTENCES), encoder.encode(SENTENCES), atol=1e-5, rtol=0)
    assert load_encoder(str(saved)).pooling == "max"


def test_last_pool_handles_left_padding():
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert POOLERS["last"](states, left).flatten().tolist() == [3.0, 7.0]
    assert POOLERS["last"](states, right).flatten().tolist() == [1.0, 7.0]


def test_custom_code_is_refused_without_trust(tiny_qwen2_dir, tmp_path):
    copy = tmp_path / "custom"
    shutil.copytree(tiny_qwen2_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_qwen.Qwen2Model"}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ThawingError, match="trust_remote_code") as err:
        load_encoder(str(copy))
    assert "stella" in str(err.value) and "bidirectional" in str(err.value)


def test_unresolvable_name_lists_every_place_tried():
    with pytest.raises(ModelNotFoundError) as err:
        load_encoder("nobody/no-such-model")
    message = str(err.value)
    assert "local directory" in message and "Hugging Face cache" in message and "HF_HUB_OFFLINE" in message


def test_saved_encoder_loads_in_sentence_transformers(tiny_qwen2_dir, tmp_path):
    encoder = load_encoder(str(tiny_qwen2_dir))
    with torch.no_grad():  # change the weights so the test cannot pass by reloading the original
        encoder.projection[0].linear.weight.mul_(2.0)
        encoder.backbone.norm.weight.add_(0.5)
    saved = save_encoder(encoder, tmp_path / "saved")
    np.testing.assert_allclose(_st_encode(saved, SENTENCES), encoder.encode(SENTENCES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(load_encoder(str(saved)).encode(SENTENCES), encoder.encode(SENTENCES), atol=1e-6)


@pytest.mark.integration
def test_minilm_matches_sentence_transformers(minilm_dir):
    encoder = load_encoder("sentence-transformers/all-MiniLM-L6-v2")  # the hub id finds the packaged copy
    texts = SENTENCES * 20 + ["a much longer sentence " * 30]
    ours = encoder.encode(texts, batch_size=16)
    assert ours.shape == (len(texts), 384)
    assert np.abs(ours - _st_encode(minilm_dir, texts, batch_size=16)).max() < 1e-5


def test_a_saved_encoder_keeps_what_its_base_declared(tiny_bert_dir, tmp_path):
    """The base model's named prompts, similarity function and Pooling's include_prompt survive thawing's save, as
    sentence-transformers reads them; a prompt on a model that pools without its prompt tokens is refused."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from thawing.errors import ThawingError
    from thawing.model.loading import load_encoder, save_encoder

    base = tmp_path / "base"
    shutil.copytree(tiny_bert_dir, base)
    declared = json.loads((base / "config_sentence_transformers.json").read_text())
    declared.update(prompts={"query": "query: ", "document": ""}, similarity_fn_name="dot")
    (base / "config_sentence_transformers.json").write_text(json.dumps(declared))
    pooling = json.loads((base / "1_Pooling" / "config.json").read_text())
    (base / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": False}))

    encoder = load_encoder(str(base))
    saved = save_encoder(encoder, tmp_path / "saved", prompts={"topic": "topic: "})
    st = SentenceTransformer(str(saved), device="cpu")
    assert st.prompts == {"query": "query: ", "document": "", "topic": "topic: "}
    assert st.similarity_fn_name == "dot" and st[1].include_prompt is False
    np.testing.assert_allclose(st.encode(["who won the game ?"]), encoder.encode(["who won the game ?"]), atol=1e-5)
    with pytest.raises(ThawingError, match="include_prompt: false"):
        encoder.encode(["who won the game ?"], prompt="query: ")
