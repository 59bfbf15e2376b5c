"""Atomic file writes: write to a temporary file beside the target, then rename, so a crash or an
error never leaves a half-written file where a result is expected."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from thawing.errors import DiskFullError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` only on success."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 would keep results.json from the rest of a team
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_if_disk_full(exc, target, written)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_file_mode() -> int:
    """The mode `open()` would give a new file: 0666 less the process's umask (read by setting it and back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(target: str | Path, text: str) -> None:
    """Write `text` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def building(target: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `target`; when the block succeeds it takes the place of `target` (which may exist),
    and when it fails it is removed. A folder cannot be renamed onto a non-empty one, so an old `target` is moved aside
    first and removed last."""
    target = Path(target)
    recover(target)  # a folder left between two renames by an earlier kill is put back first
    tmp, old = _aside(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(exc, target, written)
        raise
    _plain_modes(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _plain_modes(folder: Path) -> None:
    """Give every file built into `folder` the mode a new file gets (0666 less the umask): safetensors writes its
    files 0600, which would keep a model's weights from the team that shares its runs while the rest reads 0644."""
    mode = _new_file_mode()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _raise_if_disk_full(exc: BaseException, target: Path, written: int) -> None:
    """Turn a full disk (an OSError, or safetensors' own error, which carries only the OS's text) into a DiskFullError
    naming what was being written, how much of it was written and what is free now that it is removed."""
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        type(exc).__name__ == "SafetensorError" and ("No space left" in str(exc) or "StorageFull" in str(exc)))
    if not full:
        return
    where = target.parent if target.parent.exists() else Path(".")
    free = shutil.disk_usage(where).free
    raise DiskFullError(f"{target}: the disk is full ({_mb(written)} of it was written before it filled up, and "
                        f"removed; {_mb(free)} free now). Free space and run the command again", target, free) from exc


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _aside(target: Path) -> tuple[Path, Path]:
    """The folder being built for `target`, and where the previous `target` waits while they swap."""
    return target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")


def recover(target: str | Path) -> None:
    """Leave `target` as a complete folder, or absent, after `building` was killed at any point. `building` moves the
    old folder aside only once the new one is complete, so an aside folder without `target` means a kill between the
    two renames: the new one (else the old one) takes its place. Leftovers beside a `target` are removed."""
    target = Path(target)
    tmp, old = _aside(target)
    if not target.exists() and old.exists():
        os.replace(tmp if tmp.exists() else old, target)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
    if tmp.exists() and (target.exists() or not old.exists()):
        shutil.rmtree(tmp, ignore_errors=True)  # complete or not, it never replaced anything
