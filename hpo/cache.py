"""hpo's cache folder: files hpo can make again, kept to save time (parsed corpora, the empty
MLflow store new folders start from, reference statistics)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "HPO_CACHE_DIR"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hpo``, else ``~/.cache/hpo``: hpo's place in the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hpo"


def cache_dir() -> Path:
    """``$HPO_CACHE_DIR``, else :func:`user_cache_dir`."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return user_cache_dir()
