"""Checkpoints: atomic writes, a SHA-256 header that catches torn or corrupt files, a fallback
to the previous checkpoint with a warning, and loading through `torch.load(weights_only=True)` only."""

from __future__ import annotations

import ast
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_same_results, assert_same_state, resume_here, run_here

from gfo import checkpoint
from gfo.errors import GfoError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("no_plots")
STATE = {"loop": {"generation": 3, "best": 1.5}, "x": torch.arange(5.0), "rng": torch.ByteTensor([1, 2])}


def raw(payload: bytes) -> bytes:
    """A checkpoint file around `payload` with a valid header."""
    return b"GFOCKPT1" + hashlib.sha256(payload).hexdigest().encode() + payload


def test_save_load_round_trip_and_rotation(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, STATE)
    assert not (tmp_path / checkpoint.PREVIOUS).exists()
    checkpoint.save(tmp_path, {**STATE, "loop": {"generation": 4, "best": 1.0}})
    assert_same_state(checkpoint.load(tmp_path), {**STATE, "loop": {"generation": 4, "best": 1.0}})
    assert checkpoint._read(tmp_path / checkpoint.PREVIOUS)["loop"]["generation"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.PREVIOUS, checkpoint.NAME]


def test_atomic_write_interrupted_before_the_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "config.toml"
    checkpoint.atomic_write(target, b"old")

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt  # as if killed between fsync and rename

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"


def _flip(data: bytes) -> bytes:
    i = len(data) - 10
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


CORRUPTIONS = {
    "flipped byte": _flip,
    "truncated": lambda data: data[: len(data) // 2],
    "torn header": lambda data: data[:20],
    "empty": lambda data: b"",
    "not a checkpoint": lambda data: b"PK\x03\x04" + data[4:],
}
REASONS = {
    "flipped byte": "checksum mismatch",
    "truncated": "checksum mismatch",
    "torn header": "not a gfo checkpoint",
    "empty": "not a gfo checkpoint",
    "not a checkpoint": "not a gfo checkpoint",
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_bad_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path: Path, kind: str) -> None:
    checkpoint.save(tmp_path, STATE)
    checkpoint.save(tmp_path, {**STATE, "loop": {"generation": 4, "best": 1.0}})
    current = tmp_path / checkpoint.NAME
    current.write_bytes(CORRUPTIONS[kind](current.read_bytes()))
    with pytest.warns(
        UserWarning, match=rf"checkpoint\.pt: {REASONS[kind]}.*resuming from checkpoint\.prev\.pt"
    ):
        state = checkpoint.load(tmp_path)
    assert state["loop"]["generation"] == 3
    # the bad file is set aside, so the next save cannot rotate it into the only fallback
    assert (tmp_path / checkpoint.CORRUPT).exists() and not current.exists()
    checkpoint.save(tmp_path, {**STATE, "loop": {"generation": 4, "best": 1.0}})
    assert checkpoint._read(tmp_path / checkpoint.PREVIOUS)["loop"]["generation"] == 3


def test_no_usable_checkpoint_is_a_user_error_naming_both_files(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, STATE)
    checkpoint.save(tmp_path, STATE)
    for name in (checkpoint.NAME, checkpoint.PREVIOUS):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(
        GfoError, match=r"no usable checkpoint .*checkpoint\.pt: .*checkpoint\.prev\.pt: .*--force"
    ):
        checkpoint.load(tmp_path)


class Payload:
    """Unpickling this would call `_pwned`: what a malicious checkpoint.pt could do."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_pwned, ("unpickled",))


PWNED: list[str] = []


def _pwned(tag: str) -> str:
    PWNED.append(tag)
    return tag


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    """A file with a valid header whose pickle calls a function is refused, and nothing runs."""
    buffer = io.BytesIO()
    torch.save({"loop": Payload()}, buffer)
    (tmp_path / checkpoint.NAME).write_bytes(raw(buffer.getvalue()))
    with pytest.raises(GfoError, match="Weights only load failed"):
        checkpoint.load(tmp_path)
    assert PWNED == []


def test_every_torch_load_in_the_code_passes_weights_only_true() -> None:
    calls = []
    for path in [*ROOT.glob("gfo/**/*.py"), *ROOT.glob("gfo_llm/**/*.py"), *ROOT.glob("problems/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                ok = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert calls, "no torch.load found: the checkpoint module moved?"
    assert [where for where, ok in calls if not ok] == []


@pytest.mark.parametrize("kind", ["flipped byte", "truncated"])
def test_resume_from_a_corrupt_checkpoint_redoes_one_generation_and_is_exact(
    tmp_path: Path, kind: str
) -> None:
    ref = tmp_path / "reference"
    run_here(ref, "cmaes", 10)
    out = tmp_path / "run"
    run_here(out, "cmaes", 6)
    current = out / checkpoint.NAME
    current.write_bytes(CORRUPTIONS[kind](current.read_bytes()))
    with pytest.warns(UserWarning, match="resuming from checkpoint.prev.pt"):
        resume_here(out, 10)
    assert_same_results(ref, out)


def test_a_stale_temporary_file_is_removed_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_here(out, "pgpe", 2)
    stale = out / f".{checkpoint.NAME}.tmp{os.getpid() + 1}"
    stale.write_bytes(b"half a checkpoint")
    resume_here(out, 3)
    assert not stale.exists()
