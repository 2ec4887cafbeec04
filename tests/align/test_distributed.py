"""Data parallelism that is right, not only running: 2 processes (torchrun, gloo, CPU) train the tiny model to the
weights 1 process gets with the same global batch, log the same numbers, and leave no process behind; with DDP and
with FSDP2 (`run.data_parallel`, align.sharding).

Equivalence: fp32, the same seeds and data order; the 2-process run takes half the per-process batch of the
1-process run (SFT grad_accum, RM/DPO pairs_per_batch), so both take the same optimiser steps over the same rows.
Row counts are odd, so the epoch's last step is uneven and one process gets a padding copy at weight 0. Weights
agree to ATOL (float32 sums in a different order, through a few AdamW steps); the weights moved by far more.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import load_config
from align.distributed import epoch_step, epoch_steps, process_part, step_share
from tests.align.launch import failure_output, finish, finish_all, free_port, survivors, torchrun
from tests.conftest import arithmetic_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5  # weights of 2 processes against 1 process, fp32
BF16_ATOL = 2e-3  # the same in bf16, where the processes' products round differently (test_ppo_in_bf16_...)
TIMEOUT = 300  # seconds for one 2-process run (they take ~20 s)


# ---- shares of a step (pure) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, per_step, world", [(13, 4, 2), (7, 4, 2), (10, 3, 3), (5, 2, 1)])
def test_every_row_is_trained_on_once_per_epoch_and_padding_weighs_nothing(rows, per_step, world):
    seen, slots = [], set()
    for position in range(epoch_steps(rows, per_step)):
        step = epoch_step(list(range(rows)), per_step, position)
        shares = [step_share(step, p, world) for p in range(world)]
        slots.add(tuple(len(share) for share, _ in shares))  # the same number of passes on every process
        seen += [i for share, real in shares for i in share[:real]]
        assert sorted(i for share, real in shares for i in share[:real]) == step  # disjoint, complete
    assert sorted(seen) == list(range(rows))
    assert all(len(set(lengths)) == 1 for lengths in slots)


def test_rl_minibatches_drawn_from_every_process_are_split_by_who_holds_each_sample():
    """PPO's and GRPO's minibatches (align.rl.minibatch_updates) are drawn from the samples of every process;
    each process takes the ones it holds: disjoint parts that make up the minibatch, possibly none."""
    counts = [3, 0, 5]  # samples each process holds (GRPO's skip_equal_groups can leave a process none)
    offsets = [0, 3, 3]
    minibatches = torch.randperm(8, generator=torch.Generator().manual_seed(0)).split(3)
    for minibatch in minibatches:
        parts = [process_part(minibatch, offset, count) for offset, count in zip(offsets, counts)]
        held = sorted(int(i) + offset for part, offset in zip(parts, offsets) for i in part)
        assert held == sorted(minibatch.tolist())
        assert all(((part >= 0) & (part < count)).all() for part, count in zip(parts, counts))
    assert process_part(torch.tensor([0, 1, 2]), 3, 5).numel() == 0


# ---- no process outlives its test ---------------------------------------------------------------------------------


def test_a_launch_that_times_out_leaves_no_process_behind(tmp_path):
    """Two workers blocked in a gloo collective (rank 0 in a barrier rank 1 never joins); the launch times out and
    every process it started is gone, though torchrun put each worker in a process group of its own."""
    process = torchrun("tests/align/fixtures/stuck_collective.py", str(tmp_path))
    pid_files = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    deadline = time.time() + 120
    while not all(f.exists() for f in pid_files) and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # both workers start (imports take seconds), then block
    assert all(f.exists() for f in pid_files), "the workers never got to the collective"
    workers = [tuple(map(int, f.read_text().split())) for f in pid_files]
    assert all(group != process.pid for _, group in workers)  # killpg(torchrun's group) alone would orphan them
    assert sorted(survivors(process.token, grace=0)) == sorted([process.pid, *(pid for pid, _ in workers)])
    with pytest.raises(subprocess.TimeoutExpired):
        finish(process, timeout=1)
    assert survivors(process.token) == []


# ---- equivalence: 2 processes = 1 process -----------------------------------------------------------------------


SFT_DATA_ROWS = 7  # conversations, one per packed row (2 do not fit in pack_length)


def stage_settings(stage: str, root: Path, name: str, *overrides: str) -> tuple[Path, list[str]]:
    return REPO / "configs" / f"{stage}-tiny.yaml", [f"run.root={root}", f"run.name={name}", "train.precision=fp32",
                                                     "tracking.backend=none", *overrides]


def run_one(stage: str, root: Path, *overrides: str) -> Path:
    """The stage on 1 process (this one), as run.name `one`."""
    from align.registry import config_class, stage_module

    config, settings = stage_settings(stage, root, "one", *overrides)
    return stage_module(stage).train(load_config(config_class(stage), config, settings))


def run_two(stage: str, root: Path, *overrides: str) -> Path:
    """The stage on 2 processes (torchrun), as run.name `two`."""
    config, settings = stage_settings(stage, root, "two", *overrides)
    result = finish(torchrun("-m", "align", stage, str(config), *settings), TIMEOUT)
    assert result.returncode == 0, failure_output(result.stdout)
    return root / "two" / stage


def assert_same_training(one: Path, two: Path, base: dict[str, torch.Tensor] | None = None,
                         logged: tuple[str, ...] = (), data_parallel: str = "ddp", atol: float = ATOL) -> None:
    """Same weights (`atol`), same steps, the same logged numbers at every step; the 2-process run says it had 2,
    split as `data_parallel` says."""
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, two)]
    assert [m["status"] for m in manifests] == ["complete"] * 2 and manifests[1]["processes"] == 2
    assert [m["data_parallel"] for m in manifests] == ["none", data_parallel]
    assert manifests[0]["steps"] == manifests[1]["steps"]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst:.2e}"
    if base is not None:  # training moved the weights beyond the tolerance
        moved = max((a[k] - base[k]).abs().max().item() for k in a if k in base)
        assert moved > (100 if atol == ATOL else 2) * atol, moved
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    for name in logged:
        values = [[row[name] for row in r if name in row] for r in rows]
        assert len(values[0]) == manifests[0]["steps"], name
        assert values[1] == pytest.approx(values[0], rel=1e-5, abs=1e-5), name


@pytest.fixture(scope="module")
def sft_one(tmp_path_factory) -> tuple[Path, list[str]]:
    """SFT on 1 process over 7 conversations, one per packed row: steps of 4 micro-batches (grad_accum 4), the
    last of 3. Returns its directory and the settings the multi-process runs share with it."""
    root = tmp_path_factory.mktemp("sft")
    data = write_jsonl(root / "train.jsonl", arithmetic_rows(SFT_DATA_ROWS, seed=3))
    common = [f"data.train={data}", "data.eval=null", "data.max_rows=null", "train.max_length=64",
              "train.pack_length=64", "train.eos_check_prompts=0", "train.learning_rate=1e-3", "train.warmup_ratio=0"]
    out = run_one("sft", root, *common, "train.grad_accum=4")
    assert json.loads((out / "manifest.json").read_text())["steps"] == 2
    return out, common


@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp2"])
def test_sft_on_two_processes_equals_one(sft_one, tmp_path, tiny_model_dir, data_parallel):
    """grad_accum 2 on each of 2 processes; in the last step one process has 2 micro-batches of its own, the other
    1 and a padding copy. The loss is normalised by the step's assistant tokens on both processes together. With
    FSDP2 each process holds half of every weight, gradient and optimiser state."""
    one, common = sft_one
    two = run_two("sft", tmp_path, *common, "train.grad_accum=2", f"run.data_parallel={data_parallel}")
    assert_same_training(one, two, load_file(tiny_model_dir / "model.safetensors"), logged=("sft/loss",),
                         data_parallel=data_parallel)


def test_sft_in_bf16_on_two_processes_equals_one(sft_one, tmp_path, tiny_model_dir):
    """`precision: bf16` (bf16 weights, fp32 masters) on 2 processes: DDP does not all-reduce the bf16 gradients
    (the masters took them), the processes all-reduce the masters' fp32 gradients before each step; the weights
    are those of 1 process in bf16 with the same global batch (the fp32 masters to ATOL, as in fp32: each
    process's micro-batches add up in fp32 before the all-reduce, as one process's do)."""
    _, common = sft_one
    one = run_one("sft", tmp_path, *common, "train.grad_accum=4", "train.precision=bf16")
    two = run_two("sft", tmp_path, *common, "train.grad_accum=2", "train.precision=bf16")
    assert json.loads((two / "manifest.json").read_text())["precision"] == "bf16"
    assert_same_training(one, two, load_file(tiny_model_dir / "model.safetensors"), logged=("sft/loss",))


@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp2"])
def test_sft_on_two_nodes_over_loopback_equals_one_process(sft_one, tmp_path, data_parallel):
    """Two torchrun launches, --nnodes 2 --node_rank 0/1, one process each, meeting at 127.0.0.1: as one
    machine's launch with 2 processes, they train the weights of 1 process."""
    one, common = sft_one
    config, settings = stage_settings("sft", tmp_path, "two", *common, "train.grad_accum=2", "run.threads=1",
                                      f"run.data_parallel={data_parallel}")
    port = free_port()
    nodes = [torchrun("-m", "align", "sft", str(config), *settings, nproc=1, node=(rank, 2, port)) for rank in (0, 1)]
    for result in finish_all(nodes, TIMEOUT):
        assert result.returncode == 0, failure_output(result.stdout)
    assert_same_training(one, tmp_path / "two" / "sft", logged=("sft/loss",), data_parallel=data_parallel)


@pytest.mark.parametrize("stage, data_parallel", [("rm", "ddp"), ("dpo", "ddp"), ("rm", "fsdp2"), ("dpo", "fsdp2")])
def test_preference_stages_on_two_processes_equal_one(run_root, tmp_path, stage, data_parallel):
    """13 pairs: steps of 4 (pairs_per_batch 4 on 1 process, 2 on each of 2), the last of 1 pair, which one
    process takes while the other runs a padding copy at weight 0. pack_length 64 puts a process's pairs in one
    or two forward passes: under FSDP2 a process with fewer passes repeats one at weight 0."""
    common = [f"model.name={run_root / 'tiny' / 'sft'}", "data.max_rows=13", "data.eval=null",
              "train.learning_rate=1e-3", "train.warmup_ratio=0", "train.save_every=1000"]
    one = run_one(stage, tmp_path, *common, "train.pairs_per_batch=4")
    two = run_two(stage, tmp_path, *common, "train.pairs_per_batch=2", f"run.data_parallel={data_parallel}")
    metric = {"rm": "rm/accuracy", "dpo": "dpo/rewards/margin"}[stage]
    assert_same_training(one, two, logged=(f"{stage}/loss", metric), data_parallel=data_parallel)
    assert json.loads((one / "manifest.json").read_text())["steps"] == 4


PPO_REWARD = ("[{name: instruction_following}, "
              "{name: length_in_range, weight: 0.5, kwargs: {min_words: 1, max_words: 8}}]")
PPO_LOGGED = ("reward/total", "reward/score", "reward/length_in_range", "response_length", "kl", "kl_coef",
              "value_explained_variance", "policy_loss", "value_loss", "entropy", "approx_kl", "greedy_loop_share",
              "preference/rewards/margin", "preference/rewards/accuracy")


@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp2"])
def test_ppo_on_two_processes_equals_one(run_root, tmp_path, data_parallel):
    """8 prompts an iteration (4 per process), minibatches of 3, 3 and 2 drawn from both processes' responses (a
    process may hold all, some or none of a minibatch), 2 passes, 2 iterations.
    Sampling at temperature 1: each prompt draws from its own stream, so both runs sample the same responses;
    then the running reward normalisation, the advantage whitening, the token means of the losses, the adaptive KL
    controller and every logged mean must cover both processes' responses for the weights and the logs to agree.
    Among the 8 likeliest tokens only (top_k): the tiny model's distribution is near uniform over its vocabulary,
    where the float rounding between one process's products and two's (far below ATOL in the weights after an
    iteration) would move a second iteration's sampled token across a neighbour's boundary now and then."""
    common = [f"model.name={run_root / 'tiny' / 'sft'}", "reward.reward_model=null", f"reward.functions={PPO_REWARD}",
              "reward.normalize=running", "data.eval=null", "train.iterations=2", "train.prompts_per_iteration=8",
              "train.minibatch_size=3", "train.temperature=1.0", "train.top_k=8", "train.adaptive_kl=true",
              "train.kl_horizon=100",
              "train.learning_rate=1e-3", "train.value_learning_rate=1e-3", "train.save_every=1000",
              "train.loop_unlikelihood=1.0",  # the greedy decodes too (the tiny model's never loop: nothing to push)
              "train.preference_pairs=builtin:pairs:train", "train.preference_pairs_per_step=3"]  # 2 + 1 a process
    one = run_one("ppo", tmp_path, *common)
    two = run_two("ppo", tmp_path, *common, f"run.data_parallel={data_parallel}")
    assert_same_training(one, two, logged=tuple(f"ppo/{name}" for name in PPO_LOGGED), data_parallel=data_parallel)


def test_ppo_in_bf16_on_two_processes_trains_as_one(run_root, tmp_path):
    """`precision: bf16` (bf16 weights, fp32 masters of the adapters and the value head: PPO's auto where bf16 is
    native) on 2 processes: the masters' fp32 gradients are all-reduced before each optimiser step. One iteration,
    so both runs sample the same responses (the settings of test_ppo_on_two_processes_equals_one). In bf16 the
    two runs' products round differently (a process forwards its part of a minibatch, at other shapes), so their
    weights differ by a few 1e-4, not by float noise; a process that stepped on its own half of the gradients
    lands about 1e-2 away, beyond BF16_ATOL."""
    common = [f"model.name={run_root / 'tiny' / 'sft'}", "reward.reward_model=null", f"reward.functions={PPO_REWARD}",
              "data.eval=null", "train.iterations=1", "train.prompts_per_iteration=8", "train.minibatch_size=3",
              "train.temperature=1.0", "train.top_k=8", "train.learning_rate=1e-3", "train.value_learning_rate=1e-3",
              "train.save_every=1000", "train.precision=bf16"]
    one, two = run_one("ppo", tmp_path, *common), run_two("ppo", tmp_path, *common)
    assert json.loads((two / "manifest.json").read_text())["precision"] == "bf16"
    assert_same_training(one, two, load_file(run_root / "tiny" / "sft" / "model.safetensors"), atol=BF16_ATOL)
    rows = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0]) for d in (one, two)]
    for name in ("reward/total", "response_length", "kl"):  # the same responses, scored alike
        assert rows[1][f"ppo/{name}"] == pytest.approx(rows[0][f"ppo/{name}"], rel=1e-6, abs=1e-6), name


GRPO_LOGGED = ("reward/total", "reward/score", "response_length", "eos_rate", "equal_group_fraction",
               "advantage_abs_mean", "kl", "policy_loss", "entropy")


DEMONSTRATIONS = ("train.demonstration_column=demonstration", "train.max_new_tokens=160")


@pytest.mark.parametrize("loss, data_parallel, extra", [("grpo", "ddp", ()), ("dapo", "ddp", ()), ("dapo", "fsdp2", ()),
                                                        ("grpo", "fsdp2", DEMONSTRATIONS)],
                         ids=["grpo-ddp", "dapo-ddp", "dapo-fsdp2", "grpo-fsdp2-demonstrations"])
def test_grpo_on_two_processes_equals_one(run_root, tmp_path, loss, data_parallel, extra):
    """4 prompts an iteration (2 per process), k 3 real samples each (temperature 1: every prompt draws from its
    own stream, so each process samples its prompts' completions as the 1-process run does), minibatches of 5
    drawn from both processes' completions, 2 iterations; with dapo, groups whose rewards are all equal are left
    out (DAPO's filter), so the processes can hold different numbers of completions to train on. The group
    advantages stay within a process; the per-completion mean (grpo) and the token mean over the minibatch (dapo),
    the KL term and every logged mean must cover both processes for the weights and the logs to agree. With
    demonstrations, a process whose groups got one recomputes the iteration's old log-probs and trunk states, and
    so must the other, or FSDP2's gathers would not pair up."""
    common = [f"model.name={run_root / 'tiny' / 'sft'}", "data.eval=null", "train.iterations=2",
              "train.prompts_per_iteration=4", "train.completions_per_prompt=3", "train.minibatch_size=5",
              "train.temperature=1.0", f"train.loss={loss}", "train.save_every=1000",
              f"train.skip_equal_groups={str(loss == 'dapo').lower()}", *extra]
    one = run_one("grpo", tmp_path, *common)
    two = run_two("grpo", tmp_path, *common, f"run.data_parallel={data_parallel}")
    logged = GRPO_LOGGED + (("demonstrations",) if extra else ())
    assert_same_training(one, two, logged=tuple(f"grpo/{name}" for name in logged), data_parallel=data_parallel)
    if extra:  # some iteration had demonstrations (the random policy's completions follow few constraints)
        rows = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
        assert any(row.get("grpo/demonstrations", 0) > 0 for row in rows)
