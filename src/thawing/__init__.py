"""thawing: multi-task fine-tuning of sentence-embedding transformers, with control over what learns.

Example:
    >>> import thawing
    >>> run = thawing.train(thawing.load_config("configs/demo.yaml"))   # doctest: +SKIP
    >>> model = thawing.load(run.path)                                   # doctest: +SKIP
    >>> model.predict(["Where is my parcel?"], task="topic")             # doctest: +SKIP
    >>> thawing.push(run.path, "someone/support-topics")                 # doctest: +SKIP
    >>> model = thawing.load("someone/support-topics")                   # doctest: +SKIP
"""

from __future__ import annotations

from thawing._version import __version__, version

__all__ = ["load", "load_config", "train", "load_encoder", "push", "version", "__version__"]


def __getattr__(name: str):
    # The public API is imported on first use, so `import thawing` (and the CLI's start-up) stays light.
    if name == "load":
        from thawing.api import load

        return load
    if name == "load_config":
        from thawing.config import load_config

        return load_config
    if name == "train":
        from thawing.api import train

        return train
    if name == "push":
        from thawing.deploy.hub import push

        return push
    if name == "load_encoder":
        from thawing.model.loading import load_encoder

        return load_encoder
    raise AttributeError(f"module 'thawing' has no attribute '{name}'")
