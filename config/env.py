"""One place that reads the environment (twelve-factor).

Every setting that varies between deployments comes from an environment variable. A variable
``NAME_FILE`` (a path, as Kubernetes mounts secrets) wins over ``NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


@overload
def secret(name: str, default: str) -> str: ...
@overload
def secret(name: str, default: None = None) -> str | None: ...
def secret(name: str, default: str | None = None) -> str | None:
    """Read ``name`` from ``NAME_FILE`` if set, else from ``NAME``, else ``default``."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return os.environ.get(name, default)
