"""Shared fixtures."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: `$GFO_DATA_DIR`, else the shared data folder next to the repository (holding gsm8k/{train,test}.jsonl).
DATA_DIR = Path(os.environ.get("GFO_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def tiny_lm() -> tuple[Any, Any]:
    """`(model, tokenizer)` of `gfo_llm.model.tiny_model(seed=0)`, float32, shared by the session.

    Do not modify it (PiSSA init and the batched engine change a model in place): use `tiny_lm_copy`.
    """
    from gfo.errors import GfoError
    from gfo_llm.model import tiny_model

    try:
        return tiny_model(seed=0)
    except GfoError as exc:  # the tokenizer comes from the bundled SmolLM2 package
        pytest.skip(f"tiny model unavailable: {exc}")


@pytest.fixture
def torch_single_thread() -> Iterator[None]:
    """One torch thread for the duration of a test: tiny models gain nothing from threads, and on a
    busy machine OpenMP's spinning workers make every small op wait for a time slice (10x slower)."""
    from gfo.threads import one_thread

    with one_thread():
        yield


@pytest.fixture
def tiny_lm_copy(tiny_lm: tuple[Any, Any]) -> tuple[Any, Any]:
    """A private deep copy of the tiny model (same weights every time) and the shared tokenizer."""
    model, tokenizer = tiny_lm
    return copy.deepcopy(model), tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_lm: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama (`gfo_llm.model.tiny_model`) saved once as a model directory, float32."""
    model, tokenizer = tiny_lm
    directory = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def gsm8k_data_dir() -> Path:
    """The folder holding gsm8k/{train,test}.jsonl; GSM8K tests are skipped without it."""
    if not (DATA_DIR / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"GSM8K data not found under {DATA_DIR} (set GFO_DATA_DIR)")
    return DATA_DIR
