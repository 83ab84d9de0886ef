"""Where mlxsmall keeps downloaded and converted models."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache directory for models (``$MLXSMALL_HOME`` overrides it).

    macOS: ~/Library/Caches/mlxsmall, Linux: $XDG_CACHE_HOME/mlxsmall or ~/.cache/mlxsmall.
    """
    if os.environ.get("MLXSMALL_HOME"):
        root = Path(os.environ["MLXSMALL_HOME"])
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("mlxsmall", appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root
