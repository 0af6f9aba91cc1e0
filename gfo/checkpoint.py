"""Atomic, verified checkpoints: a torn or corrupt file is detected and the previous one used."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from gfo.errors import GfoError

NAME = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
CORRUPT = "checkpoint.corrupt.pt"
_MAGIC = b"GFOCKPT1"


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (it lives in the directory entry); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def exists(run_dir: Path) -> bool:
    """True if `run_dir` holds a checkpoint (a kill between `save`'s two renames leaves only PREVIOUS)."""
    return (run_dir / NAME).exists() or (run_dir / PREVIOUS).exists()


def save(run_dir: Path, state: dict[str, Any]) -> None:
    """Serialize `state` (tensors and plain values) with a SHA-256 header; keep the last good one."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    data = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload
    current = run_dir / NAME
    if current.exists():
        os.replace(current, run_dir / PREVIOUS)
    atomic_write(current, data)


def _read(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    header = len(_MAGIC) + 64
    if data[: len(_MAGIC)] != _MAGIC or len(data) < header:
        raise ValueError("not a gfo checkpoint")
    payload = data[header:]
    if hashlib.sha256(payload).hexdigest().encode() != data[len(_MAGIC) : header]:
        raise ValueError("checksum mismatch (torn or corrupt file)")
    state: dict[str, Any] = torch.load(io.BytesIO(payload), weights_only=True)
    return state


def load(run_dir: Path) -> dict[str, Any]:
    """The newest intact checkpoint; warns when it falls back to the previous one."""
    errors = []
    for name in (NAME, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = _read(path)
        except Exception as exc:  # any unreadable file: try the older one
            errors.append(f"{path.name}: {exc}")
            continue
        if errors:
            # Set the bad file aside: the next `save` would otherwise rotate it into PREVIOUS, leaving a
            # kill between its two renames with no intact checkpoint at all.
            os.replace(run_dir / NAME, run_dir / CORRUPT)
            warnings.warn(
                f"{errors[0]}; resuming from {path.name} instead (the bad file is kept as {CORRUPT})",
                stacklevel=2,
            )
        return state
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise GfoError(
        f"no usable checkpoint in {run_dir}{detail}; start the run over with "
        f"`gfo run --config {run_dir / 'config.toml'} --out {run_dir} --force`"
    )
