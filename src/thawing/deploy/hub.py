"""Pushing a finished run's final/ folder to a Hugging Face repo (`thawing push`); finding one by repo id is
model/hub.py's (`thawing.load("owner/name")`).

A repo holds what final/ holds, with the encoder at its root (sentence-transformers layout, so that
`SentenceTransformer("owner/name")` loads it) and heads.safetensors, labels.json, tasks.json and manifest.json beside
it, and the model card as its README.md, so the Hub shows it; `thawing.load` checks the download against
manifest.json as it checks a run's final/.

huggingface_hub is imported inside the functions: the CLI's start-up must stay light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from thawing.errors import InputError, ThawingError
from thawing.model.hub import first_line, is_repo_id
from thawing.store.run_dir import ENCODER, MANIFEST, MODEL_CARD, RunDir

log = logging.getLogger(__name__)


def push(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, token: str | None = None) -> str:
    """Upload the trained model of a finished run to the Hugging Face repo `repo_id` (created if it does not exist);
    returns the URL of the commit.

    The repo's files become exactly final/'s (files of an earlier push that final/ lacks are deleted, so the manifest
    holds for the download), with the model card as README.md, its usage section naming `repo_id`.

    Args:
        run_dir: a finished run directory (or its final/ folder).
        repo_id: owner/name: your user name or an organization, then the model's name.
        private: create the repo private; an existing public repo is refused (its visibility is not changed).
        revision: the branch to push to (created from main if it does not exist); default: main.
        commit_message: default "Upload <run name> with thawing".
        token: a Hugging Face token with write access; default: HF_TOKEN or the one `hf auth login` saved.

    Raises:
        InputError: a bad repo id or commit message; a run without final/, unfinished, or whose final/ does not
            match its manifest.
        ThawingError: what the Hub answered (no token, no write access, offline, ...), naming the repo.

    Example:
        >>> thawing.push("runs/demo-20261126-101500", "someone/support-topics")  # doctest: +SKIP
        'https://huggingface.co/someone/support-topics/commit/...'
    """
    from huggingface_hub import HfApi

    from thawing._version import version
    from thawing.store.model_card import card_for_repo

    if not is_repo_id(repo_id):
        raise InputError(f"repo id '{repo_id}' must be owner/name (a user or organization, then the model's name)")
    if commit_message is not None and not commit_message.strip():
        raise InputError("the commit message is empty")
    run = finished_run(run_dir)
    tasks = run.read_json(run.tasks)
    card = card_for_repo(run.model_card.read_text(encoding="utf-8"), repo_id, tasks)
    if card is None:  # an edited card: uploaded as the user wrote it
        log.warning("%s has no usage section of thawing's: uploaded as it is", run.model_card)
        card = run.model_card.read_text(encoding="utf-8")
    api = HfApi(library_name="thawing", library_version=version())
    auth = token or True  # True: huggingface_hub's own clear error when no token is found
    with _staged(run.final, card) as folder:
        try:
            # private=None leaves a new repo's visibility to the Hub's default (public, or the organization's)
            api.create_repo(repo_id, private=True if private else None, exist_ok=True, token=auth)
            if private and not api.repo_info(repo_id, token=auth).private:
                raise ThawingError(f"'{repo_id}' exists and is public: --private does not change an existing repo "
                                   "(make it private in its settings, or push without --private)")
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True, token=auth)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, token=auth,
                                       commit_message=commit_message or f"Upload {run.path.name} with thawing",
                                       delete_patterns="*")  # the Hub keeps .gitattributes whatever the pattern
        except ThawingError:
            raise
        except Exception as exc:  # noqa: BLE001 (HTTP errors, no token, offline, a bad branch name: each its own type)
            raise ThawingError(f"cannot push to '{repo_id}': {type(exc).__name__}: {first_line(exc)}") from None
    log.info("pushed %s to %s", run.final, repo_id)
    return str(commit.commit_url)


def finished_run(run_dir: str | Path) -> RunDir:
    """The run of `run_dir` (a run directory or its final/ folder), once checked to be finished and whole.

    Raises:
        InputError: no such folder; no final/; a run that has not finished (no results.json or model card yet); a
            final/ that does not match its manifest.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise InputError("not found: no such run directory", path=path)
    run = RunDir.of_model(path)
    if not run.final.is_dir() or not run.config.is_file():
        raise InputError("no trained model to push: expected a run directory with a final/ folder (a run saves "
                         "final/ when it ends)", path=path)
    if not run.results.is_file() or not run.model_card.is_file():
        raise InputError("this run has not finished (no results.json or final/README.md yet): wait for it to end, "
                         f"or finish it with `thawing train --resume {run.path}`", path=run.path)
    tasks = run.read_json(run.tasks)
    if not isinstance(tasks, dict) or not all(isinstance(spec, dict) for spec in tasks.values()):
        raise InputError("expected an object of tasks: the file is damaged", path=run.tasks)
    if not run.verify_final({task: spec.get("labels") for task, spec in tasks.items()}):
        raise InputError("final/ has no manifest.json (saved by an older thawing), so a download could not be "
                         "checked; train again to push", path=run.final)
    return run


@contextlib.contextmanager
def _staged(final: Path, card: str) -> Iterator[Path]:
    """A temporary folder holding final/'s files as the repo holds them, linked rather than copied (an encoder can be
    gigabytes), and `card` as README.md. The encoder (final/encoder/) is at the root, so that
    `SentenceTransformer("owner/name")` loads the repo as it is; the heads, labels and tasks beside it are thawing's,
    and the manifest names every file where it now is. Hidden files (a .DS_Store) stay behind, as the manifest ignores
    them."""
    with tempfile.TemporaryDirectory(prefix="thawing-push-") as tmp:
        root = Path(tmp) / "model"
        for source in sorted(p for p in final.rglob("*") if p.is_file()):
            relative = source.relative_to(final)
            if relative.as_posix() in (MODEL_CARD, MANIFEST) or any(part.startswith(".") for part in relative.parts):
                continue
            target = root / repo_path(relative.as_posix())
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:  # another file system, or one without hard links
                os.symlink(source.resolve(), target)
        root.mkdir(exist_ok=True)
        manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
        manifest["files"] = {repo_path(name): digest for name, digest in manifest["files"].items()}
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (root / MODEL_CARD).write_text(card, encoding="utf-8")
        yield root


def repo_path(name: str) -> str:
    """Where a file of final/ goes in a pushed repo: the encoder's at the root (sentence-transformers layout), the
    rest as it is."""
    return name.removeprefix(f"{ENCODER}/")
