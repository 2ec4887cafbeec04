"""The benchmark (benchmarks/bench.py): the comparison logic on hand-made measurements (fast), and one real `--quick`
run on tiny-random whose JSON and markdown are checked for structure and internal consistency (never for speed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.runtime import MALLOC_TUNABLES
from benchmarks.bench import (ALIGN_COMMAND_CASES, CASES, STAGES, TARGETS, child_environment, compare, main, markdown,
                              median_of_repeats, rescale_raw_ppo, selected_cases)

REPO = Path(__file__).resolve().parents[1]


# ---- fast: the harness's own logic --------------------------------------------------------------------------------


def test_cases_select_by_stage_and_the_machine_peak_always_runs():
    assert selected_cases(["dpo"]) == ["machine", "dpo/align", "dpo/trl", "dpo/hand"]
    assert selected_cases(list(STAGES)) == list(CASES)
    assert selected_cases(["eval/raw", "eval/align"]) == ["machine", "eval/align", "eval/raw"]  # CASES order


def test_the_eval_case_runs_the_engine_with_aligns_default_rows():
    from align.rollout import GenerationConfig
    from benchmarks.bench import full_settings

    settings = full_settings(2)
    assert settings.eval_slots == GenerationConfig().slots
    assert settings.eval_prompts > settings.eval_slots  # rows are refilled as answers end


def test_unknown_stage_is_refused_naming_the_valid_ones(capsys):
    with pytest.raises(ValueError, match="unknown stage.*sfft.*valid: sft, rm, dpo, ppo, eval"):
        selected_cases(["sfft"])
    with pytest.raises(ValueError, match="eval/fast"):
        selected_cases(["eval/fast"])
    assert main(["--quick", "--cases", "sft,sfft"]) == 2
    assert "sfft" in capsys.readouterr().err
    assert main(["--quick", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert main(["--quick", "--repeats", "0"]) == 2
    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err


def test_ratios_and_verdicts_follow_each_targets_direction():
    runs = {
        "sft/align": {"tokens_per_s": 300.0, "real_fraction": 0.97, "peak_rss_mib": 1600.0},
        "sft/trl": {"tokens_per_s": 100.0},
        "sft/hand": {"tokens_per_s": 400.0, "peak_rss_mib": 1000.0},
    }
    rows = {row["target_name"]: row for row in compare(runs)}
    assert set(rows) == {name for name, ours, _, other, *_ in TARGETS if ours.startswith("sft/")}
    trl = rows["SFT real tokens/s vs TRL defaults"]
    assert trl["ratio"] == pytest.approx(3.0) and trl["met"] is True
    hand = rows["SFT real tokens/s vs hand-written loop"]
    assert hand["ratio"] == pytest.approx(0.75) and hand["met"] is False
    assert rows["SFT real-token fraction of its batches"]["ratio"] == 0.97  # no comparator: the value itself
    memory = rows["SFT peak memory vs hand-written"]  # "<=": 1.6 > 1.5 misses
    assert memory["ratio"] == pytest.approx(1.6) and memory["met"] is False


def test_a_failed_run_leaves_its_comparisons_undecided_not_met():
    rows = compare({"rm/align": {"error": "exited with code 1"}, "rm/trl": {"pairs_per_s": 2.0},
                    "rm/hand": {"peak_rss_mib": 900.0}})
    assert rows and all(row["met"] is None and row["ratio"] is None for row in rows)


def test_raw_ppo_time_is_rescaled_to_aligns_tokens_per_iteration():
    runs = {"ppo/align": {"new_tokens_per_iteration": 200.0, "update_tokens_per_iteration": 1000.0,
                          "iteration_s": 30.0},
            "ppo/raw": {"generate_s_per_new_token": 0.05, "train_s_per_token": 0.01, "raw_iteration_s": 99.0}}
    rescale_raw_ppo(runs)
    assert runs["ppo/raw"]["raw_iteration_s"] == pytest.approx(0.05 * 200 + 0.01 * 1000)
    row = next(r for r in compare(runs) if r["ours_metric"] == "iteration_s")
    assert row["ratio"] == pytest.approx(1.5) and row["met"] is False  # target <= 1.25


def test_runs_wait_passively_only_when_they_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "OMP_WAIT_POLICY" not in child_environment(2, jobs=1)  # alone: OpenMP's default, as align runs
    assert child_environment(2, jobs=2)["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's own setting is kept for runs alone
    assert child_environment(2, jobs=1)["OMP_WAIT_POLICY"] == "ACTIVE"
    assert child_environment(2, jobs=1)["OMP_NUM_THREADS"] == "2"


def test_aligns_cases_run_with_the_align_commands_malloc_settings_and_the_others_with_glibcs(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert set(ALIGN_COMMAND_CASES) <= set(CASES)
    assert child_environment(2, case="ppo/align")["GLIBC_TUNABLES"] == MALLOC_TUNABLES
    assert "GLIBC_TUNABLES" not in child_environment(2, case="ppo/raw")  # a plain user's script: glibc's defaults
    assert "GLIBC_TUNABLES" not in child_environment(2, case="eval/align")  # as `align eval` runs
    assert "GLIBC_TUNABLES" not in child_environment(2, case="machine")
    monkeypatch.setenv("GLIBC_TUNABLES", "")  # the caller's own setting wins, on every side
    assert child_environment(2, case="ppo/align")["GLIBC_TUNABLES"] == ""


def test_repeated_runs_report_each_fields_median_and_keep_what_varied():
    runs = [{"case": "eval/align", "seconds": 12.0, "new_tokens": 5000, "new_tokens_per_s": 416.7, "exact": True},
            {"case": "eval/align", "seconds": 20.0, "new_tokens": 5000, "new_tokens_per_s": 250.0, "exact": True},
            {"case": "eval/align", "seconds": 14.0, "new_tokens": 5000, "new_tokens_per_s": 357.1, "exact": True}]
    combined = median_of_repeats(runs)
    assert combined["seconds"] == 14.0 and combined["new_tokens_per_s"] == 357.1 and combined["new_tokens"] == 5000
    assert combined["exact"] is True and combined["case"] == "eval/align"
    assert combined["repeats"] == {"seconds": [12.0, 20.0, 14.0], "new_tokens_per_s": [416.7, 250.0, 357.1]}
    assert median_of_repeats(runs[:1]) == runs[0]  # one run: reported as it is


def test_a_case_that_failed_in_any_repeat_is_reported_failed():
    runs = [{"seconds": 12.0}, {"error": "exited with code 1"}, {"seconds": 14.0}]
    assert median_of_repeats(runs) == {"error": "exited with code 1"}


# ---- slow: one real --quick run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, "HF_HUB_OFFLINE": "1"}
    # Two runs at a time: this run checks the harness, its timings are not read.
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--jobs", "2",
                           "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), out


def s_exact(report) -> int:
    return report["settings"]["exact_prompts"]


@pytest.mark.bench
def test_quick_run_measures_every_case_in_its_own_process(quick_run):
    report, _, out = quick_run
    assert report["failed"] == []
    assert report["settings"]["mode"] == "quick" and report["settings"]["model"] == "tiny-random"
    assert set(report["runs"]) == set(CASES) - {"machine"}
    threads = report["settings"]["threads"]
    assert report["environment"]["jobs"] == 2  # side by side, and the table says its timings measure nothing
    assert "2 runs at a time: these timings check the harness" in quick_run[1]
    assert f"Align's training cases ran with GLIBC_TUNABLES={MALLOC_TUNABLES}" in quick_run[1]
    assert "the others (align's evaluation included) with glibc's malloc defaults" in quick_run[1]
    assert report["environment"]["child_env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert report["environment"]["child_env"]["OMP_NUM_THREADS"] == str(threads)
    for case, run in report["runs"].items():
        assert run["case"] == case and run["method"] and run["precision"], case
        assert run["torch_threads"] == threads, case
        assert run["glibc_tunables"] == (MALLOC_TUNABLES if case in ALIGN_COMMAND_CASES else None), case
        assert 0 < run["baseline_rss_mib"] < run["peak_rss_mib"], case
        assert (out / "logs" / (case.replace("/", "_") + ".log")).is_file(), case
        if case == "eval/exact":  # a correctness check, not a throughput
            assert run["matches"] + len(run["divergence_logit_gaps"]) == run["prompts"] == s_exact(report)
            continue
        assert run["seconds"] > 0 and run["tokens_per_s"] > 0 and run["flop_per_s"] > 0, case
        assert 0 < run["fraction_of_peak"], case
    machine = report["machine"]
    assert machine["matmul_fp32_flop_per_s"] > 0 and machine["matmul_bf16_flop_per_s"] > 0


@pytest.mark.bench
def test_quick_run_counts_tokens_consistently(quick_run):
    report, _, _ = quick_run
    s, runs = report["settings"], report["runs"]
    for case in ("sft/align", "sft/trl", "sft/hand", "rm/align", "rm/trl", "rm/hand", "dpo/align", "dpo/trl",
                 "dpo/hand"):
        run = runs[case]
        assert run["steps_measured"] == len(run["step_seconds"]) and run["warmup_steps"] == s["warmup_steps"]
        assert 0 < run["real_tokens"] <= run["slot_tokens"], case
        assert run["padding_fraction"] == pytest.approx(1 - run["real_tokens"] / run["slot_tokens"]), case
        assert run["tokens_per_s"] == pytest.approx(run["real_tokens"] / run["seconds"]), case
    assert runs["sft/align"]["steps_measured"] == s["sft_steps"]
    assert runs["sft/trl"]["steps_measured"] == s["sft_trl_steps"]
    for case in ("rm/align", "rm/trl", "dpo/align", "dpo/trl"):
        assert runs[case]["pairs"] == s["pair_steps"] * s["pairs_per_batch"], case
    assert runs["sft/align"]["padding_fraction"] == 0.0  # packed rows, one per micro-batch
    assert runs["sft/trl"]["padding_fraction"] > 0  # TRL's default: padded, unpacked batches
    assert runs["sft/trl"]["trl_config"]["gradient_checkpointing"] == "True"  # its defaults, untouched
    # The DPO figure that is compared includes the reference model's cost.
    assert runs["dpo/align"]["pairs_per_s"] <= runs["dpo/align"]["train_pairs_per_s"]
    # Greedy generation of the same prompts by the same weights: align eval (engine and previous loop) and raw
    # generate in the same dtype make the same tokens.
    same_dtype = "eval/raw" if runs["eval/align"]["weights"] == "bf16" else "eval/raw-fp32"
    assert runs["eval/align"]["new_tokens"] == runs[same_dtype]["new_tokens"] == runs["eval/hf"]["new_tokens"]
    assert runs["eval/align"]["prompt_tokens"] == runs["eval/raw"]["prompt_tokens"]
    # Same prompts, order and seed: the warm-up iteration (identical weights) samples the same amount.
    assert runs["ppo/align"]["new_tokens_by_iteration"][0] == runs["ppo/raw"]["new_tokens_by_iteration"][0]


@pytest.mark.bench
def test_quick_run_compares_every_target_and_writes_the_markdown_table(quick_run):
    report, md, _ = quick_run
    assert [row["target_name"] for row in report["comparisons"]] == [t[0] for t in TARGETS]
    for row in report["comparisons"]:
        expected = row["ours"] / row["comparator"] if row["comparator_case"] else row["ours"]
        assert row["ratio"] == pytest.approx(expected), row["target_name"]
        if row["target"] is None:  # shown for information only
            assert row["met"] is None
        else:
            assert row["met"] == (row["ratio"] >= row["target"] if row["direction"] == ">=" else
                                  row["ratio"] <= row["target"])
    assert "| case | ours | comparator | ratio | target | met? |" in md
    for row in report["comparisons"]:
        assert f"| {row['target_name']} |" in md
    for case in report["runs"]:
        assert f"| {case} |" in md and f"- **{case}**:" in md
    assert "matmul peak fp32" in md and "GFLOP/s" in md
    assert md == markdown(report)  # the file is exactly what the JSON renders to


# ---- benchmarks/weight_only_int8.py -------------------------------------------------------------------------------


def test_int8_quantisation_rounds_each_weight_to_its_rows_nearest_step():
    import torch

    from benchmarks.weight_only_int8 import quantise

    weight = torch.tensor([[0.5, -1.27, 0.004], [2.54, 0.0, -0.01]], dtype=torch.bfloat16)
    q, scale = quantise(weight)
    assert q.dtype == torch.int8 and q[0].tolist() == [50, -127, 0] and q[1].tolist() == [127, 0, 0]
    step = scale.float()[:, None]  # 0.01 and 0.02, each row's largest magnitude / 127
    assert ((q.float() * step - weight.float()).abs() <= step / 2 + 1e-3).all()


def test_int8_benchmark_reads_the_engines_product_shapes_and_stays_close_to_bf16():
    from align.models import resolve_model_path
    from benchmarks.weight_only_int8 import decode_products, measure

    products = decode_products(resolve_model_path("tiny-random"))  # hidden 64, 2 layers, 4 heads of 16, 2 key heads
    shapes = {name: (tuple(weight.shape), runs) for name, (weight, runs) in products.items()}
    assert shapes == {"qkv": ((128, 64), 2), "attention output": ((64, 64), 2), "gate/up": ((256, 64), 2),
                      "down": ((64, 128), 2), "LM head": ((49152, 64), 1)}
    for name, bf16_ms, int8_ms, error, runs in measure(products, rows=3, repeats=1):
        assert bf16_ms > 0 and int8_ms > 0 and runs == shapes[name][1]
        assert error < 0.03, name  # one step of 127 per row: products within a few percent of the bf16 ones


# ---- benchmarks/generation_profile.py and the PPO case's labels ---------------------------------------------------


def test_generation_profile_counts_the_weights_a_decode_steps_products_read():
    from transformers import LlamaConfig

    from benchmarks.generation_profile import product_weight_bytes

    config = LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16,
                         num_hidden_layers=3, vocab_size=10)
    # head_dim 4 -> per layer q 8x8, k 4x8, v 4x8, output 8x8, gate 16x8, up 16x8, down 8x16 = 576 weights; head 10x8
    assert product_weight_bytes(config, 2) == (3 * 576 + 80) * 2


def test_the_ppo_cases_say_the_precision_each_side_computes_in():
    import torch

    from align.ppo import PPOConfig
    from align.precision import fast_bf16
    from benchmarks.ppo_cases import precision_label, raw_precision_label

    cfg = PPOConfig()
    if not fast_bf16(torch.device("cpu")):
        assert precision_label(cfg) == raw_precision_label(cfg) and precision_label(cfg).startswith("fp32")
        return
    # PPO's auto is bf16 weights with fp32 masters where bf16 is native; the raw loop trains under bf16 autocast
    assert precision_label(cfg) == "rollouts: bf16 weights; update: bf16 weights, fp32 masters"
    assert raw_precision_label(cfg) == "rollouts: bf16 weights; update: bf16 autocast, fp32 weights"
