"""benchmarks/gpu_check.py: run on CPU with its tiny shape (CI has no GPU), exactly the code the GPU
runs; and for real, with the real shapes, where CUDA is present (marked gpu)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
RATIOS = ("population_over_plain", "population_over_peft_mixed", "population_over_sequential")
METHODS = ("population", "plain", "peft_mixed", "sequential")


def gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    argv = [
        "--device",
        "cpu",
        "--tiny",
        "--json",
        str(out / "gpu_check.json"),
        "--profile",
        str(out / "profile.txt"),
    ]
    return gpu_check().main([*argv, "--peak-tflops", "1"]), out


def test_tiny_shape_on_cpu_writes_every_key(tiny_run: tuple[dict[str, Any], Path]) -> None:
    record, out = tiny_run
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(record))  # the file holds the whole record
    for key in ("device", "torch", "transformers", "peft", "placement", "elapsed_s"):
        assert saved[key] is not None
    assert saved["skipped"] == []
    shape = saved["shapes"]["tiny-llama"]
    assert shape["outputs_match"] is True
    for kind in ("svd", "lora"):  # engine == PEFT per candidate, and the candidates differ: not vacuous
        check = shape["correctness"]["fp32"][kind]
        assert check["match"] and check["rows_matching"] == "12/12" and check["candidates_differ"]
    logits = shape["correctness"]["bf16_logits"]
    assert logits["dtype"] == "torch.bfloat16" and logits["within_tolerance"] is True
    assert 0 < logits["relative"] <= logits["tolerance"]  # bf16 rounds differently, within the bound
    for key in RATIOS:
        assert shape[key] > 0
    assert shape["mfu"] > 0 and shape["peak_gpu_mb"] is None and shape["peak_rss_mb"] > 0  # CPU: RSS
    assert list(shape["cases"]) == ["P4xB4", "P6xB5"]


def test_every_method_generates_every_row_to_the_cap(tiny_run: tuple[dict[str, Any], Path]) -> None:
    """The impossible EOS id: every row runs all 16 new tokens, so tokens/s compare directly."""
    record, _ = tiny_run
    for label, (p, b) in {"P4xB4": (4, 4), "P6xB5": (6, 5)}.items():
        case = record["shapes"]["tiny-llama"]["cases"][label]
        assert set(case["methods"]) == {*METHODS, "lowrank_in_model_dtype"}
        lowrank = case["methods"]["lowrank_in_model_dtype"]
        # On the CPU the model runs in float32, so the term in the model's dtype is the same term:
        # the same tokens in every row (on CUDA, bf16, this is the measured decision).
        assert (
            lowrank["lowrank_dtype"] == "float32" and lowrank["same_rows_as_population"] == f"{p * b}/{p * b}"
        )
        assert case["lowrank_in_model_dtype_over_population"] > 0
        for method, result in case["methods"].items():
            assert result["rows"] == p * b and result["tokens"] == p * b * 16, method
            assert result["tokens_per_s"] > 0 and result["completions_per_s"] > 0
        population = case["methods"]["population"]
        assert population["full_length_rows"] == f"{p * b}/{p * b}"
        assert population["decode_stats"]["decode_steps"] > 0
        assert (
            "extrapolated to 16" in case["methods"]["peft_mixed"]["timed"]
            or "scaled" in case["methods"]["peft_mixed"]["timed"]
        )
        assert case["methods"]["sequential"]["timed"].startswith(f"3 of {p} candidates")
        for key in RATIOS:
            assert case[key] > 0


def test_targets_say_met_or_missed(tiny_run: tuple[dict[str, Any], Path]) -> None:
    record, _ = tiny_run
    labels = [f"{key} >= {threshold:g}" for key, threshold in zip(RATIOS, (0.9, 1.5, 10), strict=True)]
    assert list(record["targets"]) == [*labels, "outputs_match"]
    for label in labels:
        ratio = record["shapes"]["tiny-llama"][label.split(" ")[0]]
        threshold = float(label.split(" ")[-1])
        assert record["targets"][label] == {"tiny-llama": "met" if ratio >= threshold else "missed"}
    assert record["targets"]["outputs_match"] == {"tiny-llama": "met"}


def test_profile_holds_a_table_per_engine_call(tiny_run: tuple[dict[str, Any], Path]) -> None:
    _, out = tiny_run
    text = (out / "profile.txt").read_text()
    assert "== tiny-llama P4xB4 population:" in text and "== tiny-llama P4xB4 plain:" in text
    assert text.count("Self CPU time total") == 2


def test_a_spent_budget_skips_everything_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "gpu_check.json"
    record = gpu_check().main(["--device", "cpu", "--tiny", "--budget-s", "0", "--json", str(path)])
    assert json.loads(path.read_text())["skipped"] == record["skipped"]
    assert [s.split(":")[0] for s in record["skipped"]] == ["tiny-llama P4xB4", "tiny-llama P6xB5"]
    assert record["targets"]["outputs_match"] == {"tiny-llama": "not measured"}


def test_later_cases_are_estimated_from_the_first_by_rows() -> None:
    module = gpu_check()
    run = module.Run(module.parse_args(["--device", "cpu", "--row-budget", "1024"]))
    run.walls["s"] = {"population": 1.0, "plain": 1.0, "peft_mixed": 1.0, "sequential": 1.0}
    # 9,600 / 1,024 rows for the two full runs; PEFT's timed chunk is 10 x 100 rows against 32 x 32;
    # the sequential loop times 3 candidates of 100 prompts against 3 of 32.
    expected = 2 * 9600 / 1024 + 1000 / 1024 + 300 / 96
    assert run.estimate("s", (96, 100), (32, 32)) == pytest.approx(expected)
    assert run.estimate("unmeasured", (96, 100), (32, 32)) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_shapes_on_the_gpu(tmp_path: Path) -> None:
    """The prepared GPU line's run (docs/performance.md): measured, not held to the targets here."""
    record = gpu_check().main(["--json", str(tmp_path / "gpu_check.json"), "--budget-s", "330"])
    shape = record["shapes"]["smollm2-135m"]
    assert shape["outputs_match"] is True
    for key in RATIOS:
        assert shape[key] > 0
    assert shape["peak_gpu_mb"] > 0 and shape["mfu"] > 0
