"""The checksum manifest of a trained model (`final/manifest.json`): the sha256 of every file in `final/` and each
task's labels in id order, written when the model is saved and checked when it is loaded. A truncated copy, an edited
heads file or a label list put in another order would otherwise load without a word and predict the wrong classes.

    {"version": 1, "algorithm": "sha256", "files": {"heads.safetensors": "<hex>", "encoder/config.json": ...},
     "labels": {"<task>": ["<label of id 0>", ...]}}
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VERSION = 1
_CHUNK = 8 << 20


def file_digests(folder: Path, skip: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under `folder` (but the paths in `skip`), keyed by its path relative to `folder` (with
    '/').

    Files are hashed on threads: hashlib lets go of the GIL on large buffers, and a 1.5B model is several GB.
    """
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.relative_to(folder).as_posix() not in skip and not _hidden(p, folder))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_sha256, files))
    return {p.relative_to(folder).as_posix(): d for p, d in zip(files, digests, strict=True)}


def build(folder: Path, labels: dict[str, list[str]], skip: tuple[str, ...]) -> dict:
    """The manifest of `folder` as it is now."""
    return {"version": VERSION, "algorithm": "sha256", "files": file_digests(folder, skip), "labels": labels}


def problems(folder: Path, manifest: dict, labels: dict[str, list[str]], skip: tuple[str, ...]) -> list[str]:
    """How `folder` and the `labels` it holds now differ from `manifest`; empty when they match. Hidden files (a
    `.DS_Store`) are not compared."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return ["the manifest itself is damaged (no 'files')"]
    out = []
    recorded = manifest.get("labels") or {}
    for task in sorted(set(recorded) | set(labels)):
        if recorded.get(task) != labels.get(task):
            out.append(f"task '{task}' has labels {labels.get(task)} now, {recorded.get(task)} when trained")
    now = file_digests(folder, skip)
    for name, digest in sorted(manifest["files"].items()):
        if name not in now:
            out.append(f"{name} is missing")
        elif now[name] != digest:
            out.append(f"{name} changed (sha256 differs)")
    out += [f"{name} was added" for name in sorted(set(now) - set(manifest["files"]))]
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hidden(path: Path, folder: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(folder).parts)
