"""The native GRPO stage on `tiny-random` (LoRA on the top layer, so the frozen layer below runs once per
iteration): its stage directory, manifest and merged model that reloads; its metrics in metrics.jsonl and in the
offline W&B run; kill -9 after a checkpoint then a rerun gives the uninterrupted run's weights bit for bit; SIGTERM
checkpoints, exits 143 and resumes; k = 1 is refused; group advantages at their edges (all-equal groups, skipped
when asked; a reward function that returns None for some samples; KL in the reward); the variants run."""

import json
import signal
from pathlib import Path
from typing import get_args

import pytest
import torch

from align.config import ConfigError, load_config
from align.data import load_rows
from align.grpo import GRPOConfig, GRPOTrainConfig, Groups, group_advantages, train
from align.precision import Precision, fast_bf16, resolve_precision
from tests.align.test_pipeline import align, finish, wait_for, weights

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "grpo-tiny.yaml"
ITERATIONS, PROMPTS, K = 6, 2, 4

# A user's reward function that takes its time (so a run is still going when the test kills it) and scores
# brevity: 1 up to 4 words, 0 from 8 (random-token completions differ in length, so groups differ).
SLOW_BREVITY = '''
import time


def slow_brevity(prompts, completions, **kwargs):
    time.sleep(0.3)
    return [max(0.0, min(1.0, 2.0 - len(c[-1]["content"].split()) / 4)) for c in completions]
'''


def overrides(root: Path, reward_file: Path, *extra: str) -> list[str]:
    return [f"run.root={root}", "model.name=tiny-random", "data.max_rows=16", f"train.iterations={ITERATIONS}",
            f"train.prompts_per_iteration={PROMPTS}", f"train.completions_per_prompt={K}", "train.max_new_tokens=8",
            "train.save_every=2",
            f"reward.functions=[{{name: instruction_following}}, {{name: '{reward_file}:slow_brevity', weight: 0.5}}]",
            *extra]


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rewards") / "slow_rewards.py"
    path.write_text(SLOW_BREVITY)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, reward_file) -> Path:
    """One whole run in its own process, logging to offline W&B."""
    root = tmp_path_factory.mktemp("uninterrupted")
    code, output = finish(align("grpo", CONFIG, *overrides(root, reward_file, "tracking.backend=wandb",
                                                           "tracking.mode=offline"),
                                env={"WANDB_MODE": "offline", "WANDB_DATA_DIR": str(root / "wandb-data")}))
    assert code == 0, output
    return root / "tiny" / "grpo"


def logged(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if "grpo/reward/total" in row}


def test_stage_directory_holds_merged_model_manifest_and_aligns_own_checkpoints(uninterrupted, tiny_model_dir):
    out = uninterrupted
    for name in ("model.safetensors", "config.json", "tokenizer.json", "config.yaml", "metrics.jsonl",
                 "manifest.json", "tables/grpo/samples.jsonl"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "grpo" and manifest["status"] == "complete" and manifest["steps"] == ITERATIONS
    # precision auto: what it resolves to on this CPU (test_precision checks the rule)
    auto = resolve_precision("auto", fast_bf16(torch.device("cpu")), get_args(Precision))
    assert manifest["base_model"] == str(tiny_model_dir) and manifest["precision"] == auto
    assert manifest["parents"] == {"policy": str(tiny_model_dir), "reward_model": None}
    assert manifest["data"]["prompts"] == 16 and len(manifest["data_fingerprint"]) == 16
    assert manifest["metrics"]["grpo/iterations"] == ITERATIONS
    # 6 iterations in 4 windows: 1, 2-3, 4, 5-6 (align.rl.window_means), each the mean of what metrics.jsonl holds
    assert [window["steps"] for window in manifest["windows"]] == [[1, 1], [2, 3], [4, 4], [5, 6]]
    rows = logged(uninterrupted)
    window_eos = (rows[2]["grpo/eos_rate"] + rows[3]["grpo/eos_rate"]) / 2
    assert manifest["windows"][1]["eos_rate"] == pytest.approx(window_eos)
    # save_every 2, the last two kept (none at the last iteration: the model is the output); no TRL checkpoints
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_model_reloads_with_no_arguments_lora_merged_and_only_the_top_layer_trained(uninterrupted, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(uninterrupted)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained, before = model.state_dict(), base.state_dict()
    assert trained.keys() == before.keys()  # a plain model: no lora_A/lora_B, no base_layer
    changed = [name for name in trained if not torch.equal(trained[name], before[name])]
    assert changed and all(name.startswith("model.layers.1.") and "proj" in name for name in changed)


def test_every_iteration_logs_rewards_kl_entropy_clipping_length_eos_loops_and_equal_groups(uninterrupted):
    rows = logged(uninterrupted)
    assert sorted(rows) == list(range(1, ITERATIONS + 1))
    for row in rows.values():
        assert row["grpo/reward/total"] == pytest.approx(
            row["grpo/reward/instruction_following"] + 0.5 * row["grpo/reward/slow_brevity"], abs=1e-6)
        # no completion of 8 tokens ends with EOS here: all lose the missing-EOS penalty of 1
        assert row["grpo/reward/score"] == pytest.approx(row["grpo/reward/total"] - 1.0 * (1 - row["grpo/eos_rate"]))
        assert 0 < row["grpo/response_length"] <= 8
        assert row["grpo/kl"] >= 0  # k3 is never negative
        assert row["grpo/entropy"] > 0 and 0 <= row["grpo/clip_fraction"] <= 1
        assert 0 <= row["grpo/loop_share"] <= 1 and -1 <= row["grpo/reward_length_correlation"] <= 1
        assert row["grpo/equal_group_fraction"] in (0.0, 0.5, 1.0) and row["grpo/equal_groups_skipped"] == 0
        assert {"grpo/policy_loss", "grpo/grad_norm", "grpo/completions_per_s", "grpo/time/generate",
                "grpo/time/update"} <= set(row)
    assert any(row["grpo/kl"] > 0 for row in rows.values())  # the policy moved away from the reference
    table = [json.loads(line) for line in (uninterrupted / "tables" / "grpo" / "samples.jsonl").read_text()
             .splitlines()]
    assert [entry["step"] for entry in table] == list(range(1, ITERATIONS + 1))
    assert table[0]["columns"] == ["iteration", "prompt", "completion", "total", "instruction_following",
                                   "slow_brevity"]
    first_group = table[0]["rows"]  # the first prompt's completions come first
    assert len(first_group) == 4 and len({row[1] for row in first_group}) == 1


def test_the_offline_wandb_run_reads_back_the_new_metrics_at_every_iteration(uninterrupted):
    from align.tracking import read_offline_run

    (run_dir,) = (uninterrupted / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["job_type"] == "grpo" and run["group"] == "tiny"
    on_disk = logged(uninterrupted)
    for key in ("grpo/reward/total", "grpo/reward/slow_brevity", "grpo/kl", "grpo/entropy", "grpo/clip_fraction",
                "grpo/response_length", "grpo/eos_rate", "grpo/loop_share", "grpo/reward_length_correlation",
                "grpo/equal_group_fraction"):
        history = {row["_step"]: row[key] for row in run["history"] if key in row}
        assert history == pytest.approx({step: row[key] for step, row in on_disk.items()}), key
    assert len({table["step"] for table in run["tables"]["grpo/samples"]}) == ITERATIONS


def test_kill_9_after_a_checkpoint_then_rerun_gives_the_uninterrupted_weights(uninterrupted, reward_file, tmp_path):
    args = ("grpo", CONFIG, *overrides(tmp_path, reward_file))
    out = tmp_path / "tiny" / "grpo"
    process = align(*args)
    wait_for(lambda: any((out / "checkpoints").glob("step-*")), process)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed
    process.wait()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    code, output = finish(align(*args))
    assert code == 0, output
    assert f"resuming from {out / 'checkpoints'}" in output
    expected, resumed = weights(uninterrupted), weights(out)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)


def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes_to_the_same_weights(uninterrupted, reward_file,
                                                                                   tmp_path):
    args = ("grpo", CONFIG, *overrides(tmp_path, reward_file, "train.save_every=1000"))
    out = tmp_path / "tiny" / "grpo"
    process = align(*args)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and "grpo/reward/total" in (out / "metrics.jsonl").read_text(),
             process)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 143, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and 1 <= manifest["steps"] < ITERATIONS
    (checkpoint,) = (out / "checkpoints").glob("step-*")  # written on SIGTERM (save_every is never reached)
    assert int(checkpoint.name.split("-")[1]) == manifest["steps"]
    code, output = finish(align(*args))
    assert code == 0, output
    assert f"resuming from {checkpoint} at step {manifest['steps']}" in output
    assert sorted(logged(out)) == list(range(1, ITERATIONS + 1))
    expected, resumed = weights(uninterrupted), weights(out)
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=0, msg=name)


# ---- the config ----------------------------------------------------------------------------------------------


def test_one_completion_per_prompt_is_refused_naming_the_key():
    """A group of one has nothing to be relative to: refused when the config is read (so `align validate` and the
    CLI's one-line error say it), before any model loads."""
    with pytest.raises(ConfigError, match=r"configs/grpo-tiny.yaml: train: train.completions_per_prompt is 1; a "
                                          r"group needs at least 2 completions per prompt"):
        load_config(GRPOConfig, CONFIG, ["train.completions_per_prompt=1"])


# ---- group advantages at their edges (no model: step 4 on hand-made groups) ---------------------------------------


def groups_of(scores: list[float], k: int, **fields) -> Groups:
    n = len(scores)
    return Groups(rows=[{"prompt": "p"}] * n, k=k, prompt_ids=[[1]] * n, response_ids=[[2]] * n, texts=[""] * n,
                  finished=[True] * n, sampled_logprobs=[[0.0]] * n, scores=torch.tensor(scores), **fields)


def test_all_equal_groups_have_zero_advantages_and_are_left_out_only_when_asked():
    """Groups (1, 0) and (0.5, 0.5), k = 2, no KL. First group: r - mean = +-0.5, sample std sqrt((0.25 + 0.25) /
    (2 - 1)) = sqrt(0.5), GRPO advantages +-0.5 / (sqrt(0.5) + eps); the second: exactly 0. Trained on: all 4
    completions, or with skip_equal_groups the first group's 2."""
    t = GRPOTrainConfig(completions_per_prompt=2, kl_in="none")
    groups = groups_of([1.0, 0.0, 0.5, 0.5], 2)
    group_advantages(groups, t)
    a = 0.5 / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(groups.advantages, torch.tensor([a, -a, 0.0, 0.0]))
    assert groups.equal.tolist() == [False, True] and groups.train_index.tolist() == [0, 1, 2, 3]
    groups = groups_of([1.0, 0.0, 0.5, 0.5], 2)
    group_advantages(groups, GRPOTrainConfig(completions_per_prompt=2, kl_in="none", skip_equal_groups=True))
    assert groups.train_index.tolist() == [0, 1]


def test_kl_in_the_reward_shifts_each_completion_by_beta_times_its_summed_kl():
    """Equal scores 1, 1 (an all-equal group before the KL); k1 KL per token = old - ref log-prob: completion 0
    has tokens with 0.5 and 1.5 (sum 2), completion 1 one token with 0 (the padding's 9s are masked). beta 0.5:
    rewards 1 - 1 = 0 and 1 - 0 = 1, so dr_grpo advantages -0.5, +0.5."""
    t = GRPOTrainConfig(completions_per_prompt=2, kl_in="reward", kl_coef=0.5, kl_estimator="k1",
                        advantages="dr_grpo")
    groups = groups_of([1.0, 1.0], 2, old_logprobs=torch.tensor([[-1.0, -1.0], [-2.0, 9.0]]),
                       ref_logprobs=torch.tensor([[-1.5, -2.5], [-2.0, -9.0]]),
                       mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    group_advantages(groups, t)
    torch.testing.assert_close(groups.kl.sum(1), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(groups.advantages, torch.tensor([-0.5, 0.5]))
    assert groups.equal.tolist() == [False]


def test_a_function_that_does_not_apply_to_some_samples_leaves_them_the_other_components():
    """As the composite defines: a sample's total is the weighted sum of the components that apply to it. `only_even`
    scores 1 on even samples and returns None on odd ones; `half` gives 0.5 everywhere (weight 2 -> 1). Totals:
    2, 1, 2, 1; the missing-EOS penalty (1) hits sample 3: scores 2, 1, 2, 0. Groups (2, 1) and (2, 0): dr_grpo
    advantages 0.5, -0.5, 1, -1."""
    from align.rl import penalised_scores
    from reward.compose import CompositeReward

    def only_even(prompts, completions, **kwargs):
        return [1.0 if i % 2 == 0 else None for i in range(len(completions))]

    def half(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    reward = CompositeReward([("only_even", only_even, 1.0), ("half", half, 2.0)])
    groups = groups_of([0.0] * 4, 2)
    groups.breakdown, groups.reward_log, groups.scores = penalised_scores(
        reward, groups.rows, ["a", "b", "c", "d"], groups.response_ids, [True, True, True, False], [], 1.0, None)
    assert groups.breakdown.components["only_even"] == [1.0, None, 1.0, None]
    torch.testing.assert_close(groups.scores, torch.tensor([2.0, 1.0, 2.0, 0.0]))
    group_advantages(groups, GRPOTrainConfig(completions_per_prompt=2, kl_in="none", advantages="dr_grpo"))
    torch.testing.assert_close(groups.advantages, torch.tensor([0.5, -0.5, 1.0, -1.0]))


# ---- variants, in this process ---------------------------------------------------------------------------------


def test_groups_with_equal_rewards_everywhere_are_all_skipped_and_the_policy_stays_put(tmp_path, tiny_model_dir):
    """A reward that is 0 for every completion: every group is all-equal, skip_equal_groups leaves them all out, so
    no optimiser step runs and the saved model is the starting one."""
    from safetensors.torch import load_file

    cfg = load_config(GRPOConfig, CONFIG, [
        f"run.root={tmp_path}", "model.name=tiny-random", "data.max_rows=8", "train.iterations=2",
        "train.max_new_tokens=4", "train.skip_equal_groups=true",
        "reward.functions=[{name: length_in_range, kwargs: {min_words: 0, max_words: 1000}}]"])
    out = train(cfg)
    for row in logged(out).values():
        assert row["grpo/equal_group_fraction"] == 1.0 and row["grpo/equal_groups_skipped"] == 2
        assert "grpo/policy_loss" not in row
    trained, start = load_file(out / "model.safetensors"), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert all(torch.equal(trained[name], start[name]) for name in start)


@pytest.mark.parametrize(("loss", "advantages", "kl_in", "precision"), [
    ("dapo", "rloo", "none", "fp32"), ("dr_grpo", "dr_grpo", "reward", "bf16")])
def test_the_variants_run_and_log(tmp_path, loss, advantages, kl_in, precision):
    """DAPO's loss with clip-higher and RLOO's baseline without a reference (no KL logged); Dr. GRPO with the KL in
    the reward, bf16 weights trained through fp32 masters and a bf16 rollout copy (whose log-probs are then
    recomputed in the training forward). The other runs here train under bf16 autocast (precision auto)."""
    cfg = load_config(GRPOConfig, CONFIG, [
        f"run.root={tmp_path}", "model.name=tiny-random", "data.max_rows=8", "train.iterations=2",
        "train.max_new_tokens=4", f"train.loss={loss}", f"train.advantages={advantages}", f"train.kl_in={kl_in}",
        "train.clip_range_high=0.28", f"train.precision={precision}", "train.updates_per_batch=2"])
    rows = logged(train(cfg))
    assert sorted(rows) == [1, 2]
    for row in rows.values():
        assert ("grpo/kl" in row) == (kl_in != "none")
        assert row["grpo/entropy"] > 0 and "grpo/policy_loss" in row


def test_demonstrations_replace_a_completion_of_the_prompts_no_completion_followed(tmp_path):
    """train.demonstration_column on the built-in prompts: a prompt none of whose 4 random-token completions follows
    all its constraints has its last completion replaced by its demonstration (at most a quarter of them), which
    ends with EOS; the random policy's own never do, and the metrics are of those alone (EOS rate 0)."""
    cfg = load_config(GRPOConfig, CONFIG, [
        f"run.root={tmp_path}", "model.name=tiny-random", "data.max_rows=8", "train.iterations=2",
        "train.max_new_tokens=200", "train.demonstration_column=demonstration", "train.trunk_states=rollout"])
    out = train(cfg)
    rows = logged(out)
    assert sorted(rows) == [1, 2] and sum(row["grpo/demonstrations"] for row in rows.values()) > 0
    assert all(0 <= row["grpo/demonstrations"] <= 1 / 4 and row["grpo/eos_rate"] == 0 for row in rows.values())
    tables = [json.loads(line) for line in (out / "tables" / "grpo" / "samples.jsonl").read_text().splitlines()]
    logged_completions = [row[table["columns"].index("completion")] for table in tables for row in table["rows"]]
    demonstrations = {row["demonstration"] for row in load_rows("builtin:prompts:train", "prompt", cfg.data)[0]}
    assert any(completion in demonstrations for completion in logged_completions)


def test_a_greedy_member_joins_each_group_and_its_loops_are_logged(tmp_path):
    """train.greedy_member: each prompt's first completion is its greedy answer, the same at any sampling
    temperature, where the other completions are samples that change with it; the share of the greedy answers that
    loop is logged each iteration."""
    def first_group(temperature: float) -> list[str]:
        cfg = load_config(GRPOConfig, CONFIG, [
            f"run.root={tmp_path / str(temperature)}", "model.name=tiny-random", "data.max_rows=8",
            "train.iterations=1", "train.greedy_member=true", f"train.temperature={temperature}"])
        out = train(cfg)
        assert 0 <= logged(out)[1]["grpo/greedy_loop_share"] <= 1
        table = json.loads((out / "tables" / "grpo" / "samples.jsonl").read_text().splitlines()[0])
        return [row[table["columns"].index("completion")] for row in table["rows"]]

    cool, hot = first_group(0.5), first_group(2.0)
    assert len(cool) == len(hot) == 4  # the first prompt's group: its greedy answer, then three samples
    assert cool[0] == hot[0] and cool[1:] != hot[1:]


def test_demonstrations_need_the_column_in_every_row(tmp_path):
    cfg = load_config(GRPOConfig, CONFIG, [f"run.root={tmp_path}", "model.name=tiny-random",
                                           "train.demonstration_column=answer"])
    with pytest.raises(ConfigError, match="train.demonstration_column='answer': row 1 of builtin:prompts:train has "
                                          "no answer text in column 'answer'"):
        train(cfg)


def test_one_step_on_every_completion_takes_the_old_log_probs_from_the_loss_itself(tmp_path, monkeypatch):
    """One optimiser step on all of an iteration's completions (minibatch = prompts x k, one pass, KL in the loss):
    the policy the loss sees is the one that sampled, so the old log-probs are the loss's own, detached, and their
    pass is skipped. The run ends where the run that computes them in a pass of their own ends, and logs the same
    KL, within bf16 autocast's precision (the two passes pack the sequences differently)."""
    import align.grpo
    from safetensors.torch import load_file

    from align.models import resolve_model_path

    def run(root: Path, skip_old_pass: bool) -> tuple[dict, dict]:
        monkeypatch.setattr(align.grpo, "one_step_on_policy", lambda t: skip_old_pass)
        cfg = load_config(GRPOConfig, CONFIG, [
            f"run.root={root}", "model.name=tiny-random", "data.max_rows=8", "train.iterations=3",
            "train.max_new_tokens=8", "train.minibatch_size=8", "train.precision=bf16-autocast",
            "train.kl_coef=0.1", "reward.functions=[{name: length_in_range, kwargs: {min_words: 1, max_words: 3}}]"])
        out = train(cfg)
        return load_file(out / "model.safetensors"), logged(out)

    assert align.grpo.one_step_on_policy(load_config(GRPOConfig, CONFIG, ["train.minibatch_size=8"]).train)
    assert not align.grpo.one_step_on_policy(load_config(GRPOConfig, CONFIG, []).train)  # two steps (minibatch 4)
    skipped, skipped_log = run(tmp_path / "skipped", True)
    computed, computed_log = run(tmp_path / "computed", False)
    start = load_file(Path(resolve_model_path("tiny-random")) / "model.safetensors")
    moved = {name: computed[name] - start[name] for name in start}
    assert max(float(update.abs().max()) for update in moved.values()) > 1e-3
    for name in start:  # the same update, to bf16 autocast's precision
        torch.testing.assert_close(skipped[name] - start[name], moved[name], atol=1e-4, rtol=0.02)
    assert skipped_log[3]["grpo/kl"] > 0 and all(row["grpo/clip_fraction"] == 0 for row in skipped_log.values())
    assert skipped_log[3]["grpo/kl"] == pytest.approx(computed_log[3]["grpo/kl"], rel=0.01)


def test_trunk_states_from_the_rollout_end_where_the_trunks_own_run_ends_in_fp32(tmp_path, capsys):
    """train.trunk_states=rollout: the frozen layer's output comes from the fp32 rollout copy, which computed it as
    it sampled, instead of a run of its own: the same update to float precision (top-8 sampling, so that rounding
    of that size cannot move a sampled token of the near-uniform tiny model). With generation.backend hf, which
    keeps no states, the layer runs after sampling, and the run says so."""
    from safetensors.torch import load_file

    from align.models import resolve_model_path

    def run(name: str, *extra: str) -> dict:
        cfg = load_config(GRPOConfig, CONFIG, [
            f"run.root={tmp_path / name}", "model.name=tiny-random", "data.max_rows=8", "train.iterations=2",
            "train.max_new_tokens=8", "train.top_k=8", "train.precision=fp32", *extra])
        return load_file(train(cfg) / "model.safetensors")

    recomputed = run("recomputed")
    assert "comes from the rollout copy" not in capsys.readouterr().out
    kept = run("kept", "train.trunk_states=rollout")
    assert "the frozen layers' output comes from the rollout copy" in capsys.readouterr().out
    start = load_file(Path(resolve_model_path("tiny-random")) / "model.safetensors")
    assert max(float((recomputed[name] - start[name]).abs().max()) for name in start) > 1e-3
    for name in start:
        torch.testing.assert_close(kept[name], recomputed[name], atol=1e-5, rtol=1e-5)
    run("hf", "train.trunk_states=rollout", "generation.backend=hf")
    assert "generation.backend hf keeps no states" in capsys.readouterr().out
