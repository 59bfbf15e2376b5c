"""Finding a trained model by name: a local folder (a run directory, its final/), else the snapshot of a Hugging Face
repo, from the cache or downloaded (`thawing.load("owner/name")`). Pushing one is deploy/hub.py's.

huggingface_hub is imported inside the functions: the CLI's start-up must stay light.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from thawing.errors import InputError, ModelNotFoundError

log = logging.getLogger(__name__)

# owner/name, as the Hub spells repo ids (letters, digits, '-', '_', '.'); huggingface_hub checks the finer rules.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hugging Face repo id, owner/name (it may still name a local folder)."""
    return bool(_REPO_ID.fullmatch(name))


def model_folder(name: str | Path, revision: str | None = None) -> Path:
    """The folder of the trained model `name`: a local folder (a run directory, its final/ folder), which always takes
    precedence; else the snapshot of the Hugging Face repo `name` (a string owner/name), downloaded or read from the
    Hugging Face cache (as huggingface_hub does: HF_HUB_OFFLINE, HF_HUB_CACHE and HF_HOME apply).

    Args:
        name: a folder, or a repo id such as "someone/my-thawing-model". A `Path` is always a folder.
        revision: a branch, tag or commit of the repo (default: main); refused for a local folder.

    Raises:
        InputError: a revision for a local folder; a name that is neither a folder nor a repo id.
        ModelNotFoundError: a repo id that cannot be found, naming it and why.
    """
    path = Path(name).expanduser()
    if path.exists():
        if revision is not None:
            raise InputError(f"revision '{revision}' applies to a Hugging Face repo id; this is a local folder",
                             path=path)
        return path
    if isinstance(name, Path) or not is_repo_id(name):
        raise InputError("not found: no such folder (nor a Hugging Face repo id, owner/name)", path=path)
    return download(name, revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of repo `repo_id` at `revision`: from the Hugging Face cache, or downloaded into it.

    Raises:
        ModelNotFoundError: naming the repo and why (not in the cache while offline, no such repo or revision, ...).
    """
    from huggingface_hub import snapshot_download

    from thawing._version import version

    try:
        return Path(snapshot_download(repo_id, revision=revision, library_name="thawing", library_version=version()))
    except Exception as exc:  # noqa: BLE001 (the hub client raises many unrelated types: HTTP, offline, validation, cache)
        raise ModelNotFoundError(f"cannot find model '{repo_id}': there is no such folder here, and "
                                 f"{_why_not_found(exc, revision)}") from None


def _why_not_found(exc: Exception, revision: str | None) -> str:
    from huggingface_hub import constants, errors
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub 1.x and later

    if isinstance(exc, HFValidationError):
        return f"it is not a valid Hugging Face repo id ({first_line(exc)})"
    if isinstance(exc, GatedRepoError):  # before RepositoryNotFoundError, which it extends
        return "the repo is gated: accept its conditions on huggingface.co, then log in (`hf auth login`)"
    if isinstance(exc, RepositoryNotFoundError):
        return ("the Hugging Face Hub has no such repo (or it is private: log in with `hf auth login` or set "
                "HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return f"the repo has no revision '{revision}'"
    if isinstance(exc, incomplete):
        return f"its copy in the Hugging Face cache is incomplete ({first_line(exc)})"
    if isinstance(exc, LocalEntryNotFoundError):
        where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
        if constants.HF_HUB_OFFLINE:
            return f"it is not in {where}, and HF_HUB_OFFLINE is set (nothing is downloaded)"
        return f"it is not in {where}, and the Hub could not be reached"
    return f"the Hub could not give it ({type(exc).__name__}: {first_line(exc)})"


def first_line(exc: Exception, limit: int = 300) -> str:
    """An exception's first line (the hub client's messages run long), shortened past `limit` characters at a space,
    never inside a word: a URL in it stays whole and can be opened."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    line = lines[0]
    end = line.find(" ", limit) if len(line) > limit else -1
    return line if end == -1 else line[:end] + " ..."
