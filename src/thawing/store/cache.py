"""A disk cache for what a frozen encoder computes, so it is computed once across epochs, stages and runs.

An entry is keyed by (fingerprint of the encoder weights, pooling and length settings, the exact inputs and
prompt), so any weight change gives a new key: stale entries are never read, only left behind. Entries are
folders of .npy arrays, written to a temporary folder and renamed into place, and read back memory-mapped. Each
entry's DONE file records every array's size and blake2b checksum, verified at every read: a damaged entry (noise of
the right shape, a truncated file) is deleted with a warning and computed again, never trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("THAWING_CACHE", Path.home() / ".cache" / "thawing"))


# module -> (each tensor's name, a weak reference to it and its version when hashed; the hash)
_HASHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def fingerprint(module: torch.nn.Module) -> str:
    """A content hash of every parameter and buffer (name, shape, dtype, bytes).

    Each tensor is hashed on its own thread (hashlib lets go of the GIL on large buffers) straight from its
    memory, without a copy to bytes: a 1.5B model's 6 GB took 24 s hashed in one stream with copies.

    Within a process a module is hashed once while none of its tensors changes: each stage with a frozen encoder,
    each study scenario and interpolation asks again, and re-reading gigabytes gave the same answer. A change is
    seen through autograd's version counters, which every in-place write bumps (an optimizer step, `copy_`,
    `load_state_dict`), and a tensor replaced by another; writes through `.data` pass them by, so the one that
    thawing makes, a LoRA merge (peft), bumps them itself (`model/lora.py`).
    """
    items = sorted(module.state_dict(keep_vars=True).items())
    known = _HASHED.get(module)
    if known is not None and _unchanged(known[0], items):
        return known[1]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(_tensor_digest, items))
    digest = hashlib.blake2b(b"".join(parts), digest_size=16).hexdigest()
    _HASHED[module] = ([(name, weakref.ref(t), t._version) for name, t in items], digest)
    return digest


def _unchanged(seen: list, items: list) -> bool:
    return len(seen) == len(items) and all(
        name == now and ref() is t and version == t._version
        for (name, ref, version), (now, t) in zip(seen, items, strict=True))


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
        """The arrays of an entry, memory-mapped; None when absent or damaged (a damaged entry is removed)."""
        folder = self.path(key)
        if not (folder / "DONE").is_file():
            return None
        problem = _damage(folder)
        if problem is None:
            try:
                return {p.stem: np.load(p, mmap_mode="c") for p in folder.glob("*.npy")}
            except (ValueError, OSError) as err:  # a header the checksum could not have caught: the file changed since
                problem = f"unreadable ({err})"
        log.warning("feature cache entry %s is damaged: %s; computing it again", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> Path:
        """Write an entry atomically; a concurrent writer of the same key simply wins the race."""
        folder = self.path(key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        _sweep(folder.parent, key)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}."))
        try:
            sums = {}
            for name, array in arrays.items():
                path = tmp / f"{name}.npy"
                np.save(path, np.ascontiguousarray(array))
                sums[name] = {"bytes": path.stat().st_size, "blake2b": file_digest(path)}
            (tmp / "DONE").write_text(json.dumps({"format": 2, "arrays": sums}, indent=1))
            with contextlib.suppress(OSError):  # already written by another run: keep theirs
                os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def size_bytes(self, key: str) -> int:
        return sum(p.stat().st_size for p in self.path(key).glob("*.npy"))


STALE_S = 24 * 3600  # a write of an entry older than this was killed: no write takes a day


def _sweep(shard: Path, key: str) -> None:
    """Remove what killed writes of `key` left (their temporary `.KEY.*` folders, never read), but not one that may
    still be written by another run now."""
    now = time.time()
    for leftover in shard.glob(f".{key}.*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > STALE_S:
                shutil.rmtree(leftover, ignore_errors=True)


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes, read in 8 MiB blocks (hashlib lets go of the GIL on each)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _damage(folder: Path) -> str | None:
    """What is wrong with an entry's files against its DONE record, or None when every array checks out."""
    try:
        record = json.loads((folder / "DONE").read_text())["arrays"]
    except (ValueError, KeyError, TypeError):  # an entry from before checksums (an empty DONE) cannot be verified
        return "no checksums recorded"
    files = {p.stem: p for p in folder.glob("*.npy")}
    if set(files) != set(record):
        return f"arrays {sorted(files)} on disk, {sorted(record)} recorded"
    for name, path in files.items():
        if path.stat().st_size != record[name]["bytes"]:
            return f"{path.name} has {path.stat().st_size} bytes, {record[name]['bytes']} recorded"
        if file_digest(path) != record[name]["blake2b"]:
            return f"{path.name} does not match its checksum"
    return None
