"""Tokenize examples once, then batch them by length with dynamic padding.

`Features` hold one task split as token ids plus labels. Token-classification labels sit on each
word's first sub-token (-100 elsewhere, so the loss ignores them); `word_starts` remembers those
positions so predictions map back to words.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class Encoder(Protocol):
    """What batching needs of an encoder (model/encoder.py's `Encoder` is one; the model layer sits above data)."""

    tokenizer: Any
    max_length: int
    do_lower_case: bool

    def token_ids(self, texts: Sequence[str], prompt: str | None = None) -> list[list[int]]: ...

    def pad(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]: ...

log = logging.getLogger(__name__)

IGNORE = -100  # cross-entropy's ignore_index

@dataclass
class Features:
    """One task split, tokenized. `labels[i]` is a class id, or a per-token list for token tasks."""

    input_ids: list[list[int]]
    labels: list
    word_starts: list[list[int]] = field(default_factory=list)  # token tasks: first sub-token per word
    per_token: bool = False  # token tasks: `labels[i]` holds a label per sub-token (IGNORE after each word's first)
    # Pair tasks: example i's other texts (its second sentence; a positive and a hard negative), `input_ids[i]` being
    # its first; every example of a batch has as many. `keys`: what no two examples of a training batch may share
    # (retrieval: the positive, which would otherwise be a false in-batch negative).
    others: list[list[list[int]]] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        """Tokens per example: a pair task's are those of all its texts."""
        if self.others:
            return [len(ids) + sum(map(len, rest)) for ids, rest in zip(self.input_ids, self.others, strict=True)]
        return [len(ids) for ids in self.input_ids]

    def labelled(self, indices: Sequence[int] | None = None) -> int:
        """Items that carry a label (what the cross-entropy counts): examples, or labelled sub-tokens (word
        starts) for token tasks; over `indices`, or the whole split."""
        rows = [self.labels[i] for i in indices] if indices is not None else self.labels
        if self.per_token:
            return sum(label != IGNORE for row in rows for label in row)
        return sum(label != IGNORE for label in rows)


def featurize_texts(
    encoder: Encoder, texts: Sequence[str], labels: Sequence[int] | None, prompt: str | None
) -> Features:
    """Tokenize sentences for a classification task (labels may be None when predicting)."""
    ids = encoder.token_ids(texts, prompt)
    return Features(ids, list(labels) if labels is not None else [IGNORE] * len(ids))


def featurize_pairs(
    encoder: Encoder, texts: Sequence[Sequence[str]], labels: Sequence | None, prompt: str | None,
    keys: Sequence[int] | None = None,
) -> Features:
    """Tokenize the texts of a pair task's examples (each example's texts, as many per example within a split): the
    first text of each as `input_ids`, the others as `others`; each text on its own, so that a sentence embeds as it
    would alone."""
    flat = [text for row in texts for text in row]
    ids = encoder.token_ids(flat, prompt)
    rows, start = [], 0
    for row in texts:
        rows.append(ids[start : start + len(row)])
        start += len(row)
    return Features([r[0] for r in rows], list(labels) if labels is not None else [IGNORE] * len(rows),
                    others=[r[1:] for r in rows], keys=list(keys or []))


def separate_keys(batches: list[list[int]], keys: Sequence[int]) -> list[list[int]]:
    """The same batches with no key twice in one batch: an example whose key its batch already holds moves to the
    next batch that lacks it (a new batch at the end where none does). Deterministic; batch sizes stay at most what
    they were, except that the moved examples may make new batches."""
    out: list[list[int]] = [[] for _ in batches]
    seen: list[set[int]] = [set() for _ in batches]
    limit = [len(b) for b in batches]
    waiting: list[int] = []
    for b, batch in enumerate(batches):
        for i in batch:
            if keys[i] in seen[b]:
                waiting.append(i)
            else:
                out[b].append(i)
                seen[b].add(keys[i])
    for i in waiting:
        target = next((b for b in range(len(out)) if keys[i] not in seen[b] and len(out[b]) < limit[b]), None)
        if target is None:
            out.append([])
            seen.append(set())
            limit.append(max(limit, default=1))
            target = len(out) - 1
        out[target].append(i)
        seen[target].add(keys[i])
    return [b for b in out if b]


def featurize_words(
    encoder: Encoder, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]] | None, prompt: str | None
) -> Features:
    """Tokenize pre-split words for a token task, labelling each word on its first sub-token.

    A prompt is prepended as extra words that carry no label. A word that the tokenizer turns into nothing (`""`, a
    zero-width space, a soft hyphen) stands in as a placeholder (`placeholder_word`: the unknown token), so every
    word keeps a position and the tags after it stay on their own words. Words cut off by `max_length` get no
    sub-token; their predictions count as "O" at evaluation.
    """
    prefix = prompt.split() if prompt else []
    words = [prefix + list(s) for s in sentences]
    if encoder.do_lower_case:
        words = [[w.lower() for w in s] for s in words]
    rows = _tokenize_words(encoder, words)
    stand_in = _fill_empty_words(encoder, words, rows)
    if stand_in:
        for row, ids in zip(stand_in, _tokenize_words(encoder, [words[r] for r in stand_in]), strict=True):
            rows[row] = ids
    out = Features([], [], [], per_token=True)
    for row, (ids, word_ids) in enumerate(rows):
        labels, starts, previous = [IGNORE] * len(ids), [], None
        for pos, word in enumerate(word_ids):
            if word is not None and word != previous and word >= len(prefix):
                starts.append(pos)
                if tags is not None:
                    labels[pos] = tags[row][word - len(prefix)]
            previous = word
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.word_starts.append(starts)
    return out


def _tokenize_words(encoder: Encoder, words: list[list[str]]) -> list[tuple[list[int], list[int | None]]]:
    """Token ids and, per token, the index of the word it belongs to (None for special tokens)."""
    if not words:
        return []
    enc = encoder.tokenizer(words, is_split_into_words=True, truncation=True, max_length=encoder.max_length)
    return [(ids, enc.word_ids(row)) for row, ids in enumerate(enc["input_ids"])]


def _fill_empty_words(encoder: Encoder, words: list[list[str]], rows: list) -> list[int]:
    """Replace, in place, each word that has no token and makes none on its own by `placeholder_word`; return the
    rows changed. A word missing because `max_length` cut it off makes tokens on its own, and stays as it is."""
    empty: dict[str, bool] = {}
    changed, placeholder = [], ""
    for row, (_, word_ids) in enumerate(rows):
        seen = {w for w in word_ids if w is not None}
        if len(seen) == len(words[row]):
            continue
        missing = [w for w in range(len(words[row])) if w not in seen]
        for w in missing:
            word = words[row][w]
            if word not in empty:
                empty[word] = not encoder.tokenizer(word, add_special_tokens=False)["input_ids"]
        replace = {w for w in missing if empty[words[row][w]]}
        if replace:
            placeholder = placeholder or placeholder_word(encoder.tokenizer)
            words[row] = [placeholder if w in replace else word for w, word in enumerate(words[row])]
            changed.append(row)
    if changed:
        log.info("%d sentence(s) hold words that make no token (e.g. %r); each such word stands in as %r",
                 len(changed), next(w for w, e in empty.items() if e), placeholder)
    return changed


def placeholder_word(tokenizer) -> str:
    """The word that stands in for a word that makes no token: the tokenizer's unknown token, or another special
    token where it has none (byte-level tokenizers), the first of them that makes a token of its own."""
    for word in (tokenizer.unk_token, tokenizer.pad_token, tokenizer.eos_token, "?"):
        if word and tokenizer(word, add_special_tokens=False)["input_ids"]:
            return word
    raise ValueError("the tokenizer makes no token of its unknown, padding or end token, nor of '?'")


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length examples, so padding is small but order stays random.

    Examples are shuffled, cut into mega-batches of `group` batches, sorted by length inside each,
    split into batches, and the batches shuffled again.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * group
    for start in range(0, len(order), span):
        mega = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int, group: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length examples, each filled up to `max_tokens` padded tokens.

    Like `length_grouped_batches`, but a batch holds as many examples as fit the budget (count x longest
    <= max_tokens), so short sentences make big batches and long ones small batches. An example longer than
    the budget gets a batch of its own.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean = max(1.0, sum(lengths) / max(1, len(lengths)))
    span = max(1, int(max_tokens / mean) * group)
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        batches += [[chunk[j] for j in b] for b in sorted_batches([lengths[i] for i in chunk], 1, max_tokens)]
    rng.shuffle(batches)
    return batches


def packed_batches(lengths: Sequence[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Batches of randomly chosen examples holding up to `max_tokens` real tokens each, for packed rows.

    No length grouping: packing removes the padding, and a mix of lengths packs rows tighter than
    similar lengths do (short sentences fill the gaps that long ones leave).
    """
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = [[]]
    tokens = 0
    for i in order:
        if batches[-1] and tokens + lengths[i] > max_tokens:
            batches.append([])
            tokens = 0
        batches[-1].append(i)
        tokens += lengths[i]
    return [b for b in batches if b]


def sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Batches in order of length (longest first), for inference: `batch_size` items each, or as many as fit
    `max_tokens` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    if not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:  # the batch's first member is its longest: it sets the padded width
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without the host waiting: to a GPU from pinned memory, asynchronously (a plain copy
    from pageable memory makes the host wait until the GPU has run everything queued before it)."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def collate(encoder: Encoder, features: Features, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Pad the chosen examples to their longest member: input_ids, attention_mask, labels. A pair task's texts come
    as (B, S, T): its S texts per example, padded together."""
    if features.others:
        sides = {len(features.others[i]) for i in indices}
        if len(sides) > 1:
            raise ValueError(f"a batch of a pair task mixes examples of {sorted(s + 1 for s in sides)} texts")
        batch = encoder.pad([ids for i in indices for ids in [features.input_ids[i], *features.others[i]]])
        count = sides.pop() + 1
        batch = {k: v.view(len(indices), count, -1) for k, v in batch.items()}
    else:
        batch = encoder.pad([features.input_ids[i] for i in indices])
    labels = [features.labels[i] for i in indices]
    if features.per_token:  # pad token labels with IGNORE on the same side as the ids
        width = batch["input_ids"].shape[1]
        left = encoder.tokenizer.padding_side == "left"
        padded = [([IGNORE] * (width - len(x)) + x) if left else (x + [IGNORE] * (width - len(x))) for x in labels]
        batch["labels"] = torch.tensor(padded, dtype=torch.long)
    else:  # class ids (long), or multi-hot rows (float) for multi-label tasks
        batch["labels"] = torch.tensor(labels)
    return batch
