"""Tagging schemes for token classification: which tags a scheme allows, and its seqeval class.

A tag is either the outside tag `O` or `<prefix>-<type>` (e.g. `B-PER`), where the prefixes a
scheme allows are those seqeval's strict mode accepts. Only single tags are checked here, not
transitions between them (an `I-PER` after `O` is kept): seqeval's strict mode already treats such
spans as it should, and many real IOB2 files contain a few.
"""

from __future__ import annotations

TAG_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")

# Prefixes allowed before '-<type>' in each scheme ('O' is always allowed on its own).
_PREFIXES: dict[str, tuple[str, ...]] = {
    "IOB1": ("I", "B"),
    "IOB2": ("B", "I"),
    "IOE1": ("I", "E"),
    "IOE2": ("I", "E"),
    "IOBES": ("B", "I", "E", "S"),
    "BILOU": ("B", "I", "L", "U"),
}


def _known(scheme: str) -> str:
    name = scheme.upper()
    if name not in TAG_SCHEMES:
        raise ValueError(f"unknown tag scheme '{scheme}'; choose one of {', '.join(TAG_SCHEMES)}")
    return name


def check_tags(tags: list[str], scheme: str) -> str | None:
    """Find the first tag that the scheme does not allow.

    Args:
        tags: The tags of one sentence.
        scheme: One of `TAG_SCHEMES` (case-insensitive).

    Returns:
        A short description of the first invalid tag, or None when all are valid.

    Raises:
        ValueError: If `scheme` is not a known scheme.

    Example:
        >>> check_tags(["B-PER", "S-LOC"], "IOB2")
        "tag 2 'S-LOC': prefix 'S' is not allowed in IOB2 (allowed: B-, I- and 'O')"
    """
    name = _known(scheme)
    prefixes = _PREFIXES[name]
    allowed = ", ".join(f"{p}-" for p in prefixes[:-1]) + f", {prefixes[-1]}- and 'O'"
    for i, tag in enumerate(tags, start=1):
        if not isinstance(tag, str):
            return f"tag {i} is {type(tag).__name__} {tag!r}, expected a string"
        if tag == "O":
            continue
        prefix, sep, kind = tag.partition("-")
        if not sep or not kind:
            return f"tag {i} '{tag}' is neither 'O' nor '<prefix>-<type>' (allowed prefixes: {allowed})"
        if prefix not in prefixes:
            return f"tag {i} '{tag}': prefix '{prefix}' is not allowed in {name} (allowed: {allowed})"
    return None


def seqeval_scheme(scheme: str) -> type:
    """The seqeval scheme class for strict entity extraction (`mode="strict", scheme=...`).

    Raises:
        ValueError: If `scheme` is not a known scheme.
    """
    from seqeval import scheme as seqeval_schemes  # imported when needed, like metrics.py

    return getattr(seqeval_schemes, _known(scheme))
