"""Atomic file writes: a crash or Ctrl-C never leaves a half-written result in place of a good one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zsad.errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~umask())  # mkstemp creates 0600; results should read like any other file
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_output_dir(path: str | Path) -> None:
    """Refuse, before any work starts, an output folder that is a file or lies where nothing can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: the output folder is an existing file; choose another --out")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{path}: {existing} is a file, so the output folder cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot write into {existing} (permission denied)")


def umask() -> int:
    """The process umask (read without changing it), for files made private by ``mkstemp``/``mkdtemp``."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
