"""A disk cache for what a frozen encoder computes, so it is computed once across epochs, stages and runs.

An entry is keyed by (fingerprint of the encoder weights, pooling and length settings, the exact inputs and
prompt), so any weight change gives a new key: stale entries are never read, only left behind. Entries are
folders of .npy arrays, written to a temporary folder and renamed into place, and read back memory-mapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("THAWING_CACHE", Path.home() / ".cache" / "thawing"))


@torch.no_grad()
def fingerprint(module: torch.nn.Module) -> str:
    """A content hash of every parameter and buffer (name, shape, dtype, bytes).

    Each tensor is hashed on its own thread (hashlib lets go of the GIL on large buffers) straight from its
    memory, without a copy to bytes: a 1.5B model's 6 GB took 24 s hashed in one stream with copies.
    """
    items = sorted(module.state_dict().items())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(_tensor_digest, items))
    return hashlib.blake2b(b"".join(parts), digest_size=16).hexdigest()


def _tensor_digest(item: tuple[str, torch.Tensor]) -> bytes:
    name, tensor = item
    digest = hashlib.blake2b(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode(), digest_size=16)
    digest.update(memoryview(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
    return digest.digest()


def entry_key(fingerprint_: str, settings: dict, inputs: list) -> str:
    """The key of one cached split: the weights' fingerprint, settings (pooling, normalization, precision, task type)
    and inputs (token ids, so prompt and truncation are in them)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(fingerprint_.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for item in inputs:
        digest.update(json.dumps(item).encode())
        digest.update(b"\0")
    return digest.hexdigest()


class FeatureStore:
    """Folders of named arrays under `root`, one per key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of an entry, memory-mapped; None when absent."""
        folder = self.path(key)
        if not (folder / "DONE").is_file():
            return None
        return {p.stem: np.load(p, mmap_mode="c") for p in folder.glob("*.npy")}

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Write an entry atomically; a concurrent writer of the same key simply wins the race."""
        folder = self.path(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}."))
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
            (tmp / "DONE").write_text("")
            with contextlib.suppress(OSError):  # already written by another run: keep theirs
                os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def size_bytes(self, key: str) -> int:
        return sum(p.stat().st_size for p in self.path(key).glob("*.npy"))
