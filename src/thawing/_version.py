"""thawing's version: one place, which pyproject.toml reads and every module that records it imports."""

from __future__ import annotations

__version__ = "0.1.0"  # the source tree's version; pyproject.toml reads it from here


def version() -> str:
    """thawing's version: the installed distribution's (importlib.metadata), or this source tree's `__version__` when
    thawing runs without being installed (a checkout on PYTHONPATH).

    Example:
        >>> import thawing
        >>> thawing.version() == thawing.__version__   # doctest: +SKIP
        True
    """
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("thawing")
    except PackageNotFoundError:
        return __version__
