"""Where datasets live: one data folder per user, and one error that says how to get a missing file."""

from __future__ import annotations

import os

ENV = "FASTLAYERS_DATA"


def default_root() -> str:
    """The data folder examples read when no ``--root`` is given: ``$FASTLAYERS_DATA`` if set, else
    ``~/.cache/fastlayers/data`` (``$XDG_CACHE_HOME/fastlayers/data`` where that is set)."""
    env = os.environ.get(ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastlayers", "data")


def require(root: str | None, relpath: str, dataset: str) -> str:
    """``root/relpath`` if it exists, else FileNotFoundError naming the missing path and the fetch command.

    ``root`` None means ``default_root()``; ``dataset`` is the name ``python -m fastlayers.data.fetch`` knows."""
    root = default_root() if root is None else root
    path = os.path.join(root, relpath)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{dataset}: {path} does not exist. Get it with `python -m fastlayers.data.fetch {dataset} --root "
            f"{root}`, or pass --root to the folder that holds {relpath}")
    return path
