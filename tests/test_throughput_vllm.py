"""benchmarks/population_throughput.py's vLLM methods, on gfo's side: the skip path (no
--vllm-python, an interpreter without vLLM, one that does not exist) and the JSON the benchmark
and benchmarks/vllm_worker.py exchange. vLLM itself runs only in its own venv (docs/performance.md);
nothing here imports or imitates it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NO_VLLM = importlib.util.find_spec("vllm") is None


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_module() -> ModuleType:
    return load("population_throughput")


@pytest.fixture(scope="module")
def worker() -> ModuleType:
    return load("vllm_worker")  # imports vLLM only inside its functions


def small(model_dir: Path, *extra: str) -> list[str]:
    return [
        *("--model", str(model_dir), "--popsize", "2", "--prompts", "3", "--max-new-tokens", "5"),
        *("--row-budget", "4", "--repeats", "1", "--no-rss", "--dtype", "fp32", *extra),
    ]


def test_vllm_methods_are_skipped_with_a_note(
    bench_module: ModuleType,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    torch_single_thread: None,
) -> None:
    """An interpreter without vLLM (this one, or one that does not exist): gfo's methods run, the
    vLLM ones are skipped, the note printed and the reason in the JSON, no vLLM ratios."""
    python, why = (sys.executable, "cannot import vllm: ModuleNotFoundError")
    if not NO_VLLM:
        python, why = (str(tmp_path / "nope"), "did not run")
    out = tmp_path / "throughput.json"
    argv = small(tiny_model_dir, "--methods", "engine,base,vllm_plain,vllm_lora", "--json", str(out))
    results = bench_module.main([*argv, "--vllm-python", python])
    for method in ("vllm_plain", "vllm_lora"):
        assert why in results["methods"][method]["skipped"]
    assert results["methods"]["engine"]["rows"] == 6 and results["engine_over_base"] > 0
    assert not any(k.startswith(("engine_over_vllm", "rows_matching_vllm")) for k in results)
    written = json.loads(out.read_text())
    assert written["methods"]["vllm_lora"] == {"skipped": results["methods"]["vllm_lora"]["skipped"]}
    printed = capsys.readouterr().out
    assert "vllm_plain, vllm_lora skipped: " in printed and "vllm_lora    skipped: " in printed


def test_the_probe_says_why_vllm_is_skipped(bench_module: ModuleType, tmp_path: Path) -> None:
    version, why = bench_module.probe_vllm(None)
    assert version is None and why.startswith("no --vllm-python given")
    version, why = bench_module.probe_vllm(str(tmp_path / "nope"))
    assert version is None and "did not run" in why
    if NO_VLLM:
        version, why = bench_module.probe_vllm(sys.executable)
        assert version is None and "cannot import vllm: ModuleNotFoundError" in why


def test_vllm_python_alone_adds_the_vllm_methods(bench_module: ModuleType) -> None:
    assert bench_module.parse_args([]).methods == list(bench_module.METHODS)
    with_vllm = bench_module.parse_args(["--vllm-python", "/venv/bin/python"]).methods
    assert with_vllm == [*bench_module.METHODS, "vllm_plain", "vllm_lora"]
    with pytest.raises(SystemExit):
        bench_module.parse_args(["--methods", "engine,vllm"])


def test_the_worker_without_vllm_says_why(worker: ModuleType, tmp_path: Path) -> None:
    if not NO_VLLM:
        pytest.skip("this interpreter has vLLM")
    script = str(BENCHMARKS / "vllm_worker.py")
    probe = subprocess.run([sys.executable, script, "--probe"], capture_output=True, text=True, check=False)
    assert probe.returncode == 3
    assert json.loads(probe.stdout)["error"].startswith("cannot import vllm: ModuleNotFoundError")
    run = subprocess.run(
        [sys.executable, script, str(tmp_path / "request.json"), str(tmp_path / "response.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 3 and "cannot import vllm" in run.stderr
    assert not (tmp_path / "response.json").exists()


@pytest.fixture
def bench(bench_module: ModuleType, tiny_model_dir: Path, torch_single_thread: None) -> Any:
    return bench_module.Bench(bench_module.parse_args(small(tiny_model_dir)))


def test_the_request_carries_gfos_prompts_eos_cap_and_candidates(
    bench: Any, worker: ModuleType, tmp_path: Path
) -> None:
    from gfo_llm.batched import eos_ids
    from gfo_llm.model import model_id

    request = json.loads(json.dumps(bench.vllm_request(["vllm_plain", "vllm_lora"], tmp_path)))
    worker.check_request(request)  # what the worker would accept, field by field
    tokenizer = bench.tokenizer
    assert request["prompt_ids"] == tokenizer(bench.prompts, add_special_tokens=False)["input_ids"]
    assert request["eos_ids"] == eos_ids(bench.original, tokenizer) and request["eos_ids"]
    assert request["max_tokens"] == 5 and request["candidates"] == 2 and request["repeats"] == 1
    assert request["max_model_len"] == max(map(len, request["prompt_ids"])) + 5
    assert request["model"] == model_id(bench.original) == str(Path(bench.args.model).resolve())
    assert request["dtype"] == "float32" and request["methods"] == ["vllm_plain", "vllm_lora"]
    # One PEFT folder per candidate, against the original weights: rank 2r after the PiSSA start.
    assert len(request["adapters"]) == 2
    configs = [json.loads((Path(a) / "adapter_config.json").read_text()) for a in request["adapters"]]
    assert [c["r"] for c in configs] == [16, 16] and request["max_lora_rank"] == 16
    assert {c["base_model_name_or_path"] for c in configs} == {request["model"]}
    assert sorted(configs[0]["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    a0 = (Path(request["adapters"][0]) / "adapter_model.safetensors").read_bytes()
    assert a0 != (Path(request["adapters"][1]) / "adapter_model.safetensors").read_bytes()
    assert bench.vllm_request(["vllm_plain"], tmp_path / "none")["adapters"] == []


def test_the_worker_refuses_a_malformed_request(bench: Any, worker: ModuleType, tmp_path: Path) -> None:
    request = bench.vllm_request(["vllm_plain", "vllm_lora"], tmp_path)
    for change, field in (
        ({"adapters": request["adapters"][:1]}, "one adapter folder per candidate"),
        ({"methods": ["vllm"]}, "methods"),
        ({"prompt_ids": [[]]}, "prompt_ids"),
        ({"max_tokens": "5"}, "max_tokens"),
    ):
        with pytest.raises(ValueError, match=field):
            worker.check_request({**request, **change})


def test_the_response_gets_gfos_stop_rule_and_is_compared_row_by_row(
    bench_module: ModuleType, bench: Any
) -> None:
    """A response as the worker writes it: vLLM stops at EOS and the cap only, so gfo's stop
    patterns (the arithmetic answer line) cut its rows afterwards; rates from the best run."""
    from gfo_llm.batched import eos_ids

    tokenizer = bench.tokenizer
    engine = bench_module.timed(bench, bench.setup("engine"), 5)
    gfo_ids = engine["token_ids"]
    gfo_rows = [row for cand in gfo_ids for row in cand]
    answer = tokenizer("#### 7\n", add_special_tokens=False)["input_ids"]
    other = [*tokenizer("12", add_special_tokens=False)["input_ids"], eos_ids(bench.original, tokenizer)[0]]
    rows = [list(row) for row in gfo_rows]  # candidate-major, as the worker returns them
    rows[1] = answer + tokenizer(" and more", add_special_tokens=False)["input_ids"]  # past the answer line
    rows[2] = other  # ends at EOS
    response = {"engine_start_s": 12.5, "seconds": [4.0, 2.0], "token_ids": rows}
    entry = bench.vllm_entry(json.loads(json.dumps(response)))
    assert entry["seconds"] == 2.0 and entry["rows"] == 6 and entry["completions_per_s"] == 3.0
    assert entry["token_ids"][0][1] == answer  # cut after "#### 7\n", as gfo's engine stops
    assert entry["token_ids"][0][2] == other
    assert entry["generated_tokens"] == sum(map(len, rows)) > entry["tokens"]
    assert entry["tokens"] == sum(map(len, rows)) - (len(rows[1]) - len(answer))
    assert entry["engine_start_s"] == 12.5
    methods = {"engine": engine, "vllm_lora": entry, "vllm_plain": entry, "base": engine}
    ids = {
        "engine": gfo_ids,
        "vllm_lora": entry["token_ids"],
        "vllm_plain": entry["token_ids"],
        "base": gfo_ids,
    }
    compared = bench_module.compare_vllm(methods, ids)
    same = 4 + (gfo_rows[1] == answer) + (gfo_rows[2] == other)
    assert compared["rows_matching_vllm_lora"] == f"{same}/6" == compared["rows_matching_vllm_plain"]
    assert compared["engine_over_vllm_lora"] == engine["completions_per_s"] / 3.0
    assert compared["engine_over_vllm_plain"] == engine["tokens_per_s"] / entry["tokens_per_s"]
    assert bench_module.compare_vllm(methods, {**ids, "vllm_lora": None, "vllm_plain": None}) == {}


def test_a_failed_worker_is_reported_by_its_exception(bench_module: ModuleType) -> None:
    tail = [  # the end of a real worker failure: Python's exit warnings follow the exception
        '      File "benchmarks/vllm_worker.py", line 148, in <listcomp>',
        "    ValueError: zip() argument 2 is longer than argument 1",
        "    /usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: "
        "There appear to be 1 leaked shared_memory objects to clean up at shutdown",
        "      warnings.warn('resource_tracker: There appear to be %d '",
    ]
    assert bench_module._error_line(tail) == "ValueError: zip() argument 2 is longer than argument 1"
    assert (
        bench_module._error_line(["Illegal instruction (core dumped)", ""])
        == "Illegal instruction (core dumped)"
    )
