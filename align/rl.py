"""What the RL stages share: which prompts an iteration uses, the rollout copy of the policy and its weights,
scoring with the missing-EOS penalty, minibatch updates, and what a batch of scored completions is judged by
(per-component rewards, constraint pass rates, length and reward-hacking signals, the sample table)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import torch

from align.config import ConfigError
from align.distributed import global_mean, global_sum
from align.logprobs import Trunk, rollout_trunk, trunk_states
from align.loop import epoch_permutation
from align.sharding import gathered, state_of


def iteration_rows(rows: list[dict], iteration: int, per_iteration: int, seed: int, process: int = 0,
                   processes: int = 1) -> list[dict]:
    """This process's prompts for `iteration`: `per_iteration` prompts a step through a fixed per-epoch shuffle
    (so a resumed run sees the same ones), split evenly between the processes."""
    per_process = per_iteration // processes
    start = iteration * per_iteration
    epoch = start // len(rows)
    # two epochs' orders back to back, for an iteration that runs over an epoch's end
    order = epoch_permutation(len(rows), seed, epoch) + epoch_permutation(len(rows), seed, epoch + 1)
    begin = start % len(rows) + process * per_process
    return [rows[i] for i in order[begin : begin + per_process]]


def iteration_prompts(rows: list[dict], iteration: int, per_iteration: int, seed: int,
                      accelerator) -> tuple[list[dict], int, int]:
    """This process's prompts for `iteration` (`iteration_rows`), the seed the iteration's sampling draws from (a
    function of the run's seed and the iteration, so a resumed run samples what the uninterrupted one did) and the
    index of this process's first prompt in the iteration's whole batch (each prompt samples from its own stream,
    `align.rollout.Sampler`, so N processes draw what one process would)."""
    batch = iteration_rows(rows, iteration, per_iteration, seed, accelerator.process_index, accelerator.num_processes)
    first = accelerator.process_index * (per_iteration // accelerator.num_processes)
    return batch, seed * 100003 + iteration * 101, first


class StepTimer:
    """The seconds each step of an iteration took: `lap(name)` records the time since the previous lap (or since
    the timer was made) as `seconds[name]`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self._last = now - self._last, now


def constraint_pass_rates(rows: list[dict], completions: list) -> dict[str, float]:
    """Fraction of completions meeting each constraint type, for rows with a `constraints` column:
    {"constraint/<type>": rate}. What the run is judged by, independent of reward weights."""
    from reward.functions import completion_text, prompt_text
    from reward.verifiers import check_all, parse_constraints

    by_type: dict[str, list[bool]] = {}
    for row, completion in zip(rows, completions):
        constraints = parse_constraints(row["constraints"]) if row.get("constraints") else []
        results = check_all(constraints, completion_text(completion), prompt=prompt_text(row["prompt"]))
        for constraint, ok in zip(constraints, results):
            by_type.setdefault(constraint["type"], []).append(ok)
    return {f"constraint/{kind}": sum(oks) / len(oks) for kind, oks in by_type.items()}


def pearson(x: list[float], y: list[float]) -> float:
    """Correlation of two lists (0 when either is constant): e.g. reward vs response length, a hacking signal."""
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def pairwise_disagreement(model_scores: list[float], verifier_scores: list[float | None]) -> float:
    """Among pairs of samples that the verifiers rank differently, the fraction the reward model ranks the other
    way round: how often the learned reward and the programmatic checks disagree (0 = never)."""
    pairs = disagree = 0
    for i in range(len(model_scores)):
        for j in range(i + 1, len(model_scores)):
            vi, vj = verifier_scores[i], verifier_scores[j]
            if vi is None or vj is None or vi == vj:
                continue
            pairs += 1
            disagree += (model_scores[i] - model_scores[j]) * (vi - vj) < 0
    return disagree / pairs if pairs else 0.0


def completion_metrics(breakdown, rows: list[dict], texts: list[str], lengths: list[int],
                       finished: list[bool]) -> dict[str, float]:
    """What a batch of scored completions is judged by: each reward component, the constraint pass rates, the
    response length, two reward-hacking signals (reward-length correlation, reward model against verifiers), the
    EOS rate (the share that stopped within the token budget) and the share of repetition loops
    (reward.degeneration)."""
    from reward.degeneration import loop_share

    metrics = {**breakdown.metrics("reward/"), **constraint_pass_rates(rows, texts)}
    metrics.update({
        "response_length": sum(lengths) / len(lengths),
        "eos_rate": sum(finished) / len(finished),
        "loop_share": loop_share(texts),
        "reward_length_correlation": pearson(breakdown.total, lengths),
    })
    components = breakdown.components
    if "reward_model" in components and "instruction_following" in components:
        metrics["reward_model_verifier_disagreement"] = pairwise_disagreement(
            components["reward_model"], components["instruction_following"])
    return metrics


def global_completions(breakdown, reward_log, rows: list[dict], texts: list[str], lengths: list[int],
                       finished: list[bool], leave_out: list[int] = ()) -> tuple:
    """Every process's scored completions, in process order: (breakdown, reward log, rows, texts, lengths,
    finished) of the global batch, what an iteration's metrics describe; this process's at `leave_out` (the
    demonstrations: what the metrics say is said of the policy's own) left out. Call it on every process."""
    from align.distributed import gather_each
    from align.rewards import RewardLog
    from reward.compose import RewardBreakdown

    if leave_out:
        left_out = set(leave_out)
        own = [i for i in range(len(rows)) if i not in left_out]
        breakdown = breakdown.subset(own)
        rows, texts, lengths, finished = ([values[i] for i in own] for values in (rows, texts, lengths, finished))

    parts = gather_each((breakdown.total, breakdown.components, reward_log.metrics, rows, texts, lengths, finished))
    if len(parts) == 1:
        return breakdown, reward_log, rows, texts, lengths, finished
    joined = RewardBreakdown([v for p in parts for v in p[0]],
                             {name: [v for p in parts for v in p[1][name]] for name in breakdown.components})
    metrics: dict[str, list[float]] = {}
    for part in parts:
        for name, values in part[2].items():
            metrics.setdefault(name, []).extend(values)
    return (joined, RewardLog(metrics), *([v for p in parts for v in p[i]] for i in range(3, 7)))


def log_samples(tracker, name: str, step: int, prompts: list, completions: list, breakdown, limit: int,
                step_column: str = "step", extra: dict[str, list] | None = None) -> None:
    """The first `limit` completions of a batch, with their total and per-component rewards and the `extra`
    columns reward functions logged (TRL's `log_extra`: one value per sample), as table `name` (one table over the
    whole run; its first column, `step_column`, says when). A table keeps the extra columns of its first step."""
    from reward.functions import completion_text, prompt_text

    if tracker is None or limit <= 0:
        return
    names, extra = list(breakdown.components), extra or {}
    columns = [step_column, "prompt", "completion", "total", *names]
    known, fixed = tracker.table_columns(name), len(columns)
    extra_columns = known[fixed:] if known else list(extra)
    columns += extra_columns
    rows = [[step, prompt_text(prompt), completion_text(completion), round(total, 4),
             *[breakdown.components[component][i] for component in names],
             *[_cell(extra.get(column), i) for column in extra_columns]]
            for i, (prompt, completion, total) in enumerate(zip(prompts, completions, breakdown.total))]
    tracker.log_table(name, columns, rows[:limit], step=step)


def _cell(values: list | None, index: int):
    """Sample `index` of a logged extra column, as a table cell: a JSON scalar as it is, anything else as text."""
    value = values[index] if values is not None and index < len(values) else None
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


# ---- the rollout copy of the policy ---------------------------------------------------------------------------


def rollout_generator(policy_path: str, tokenizer, generation, device, precision: str):
    """A TextGenerator over a copy of the policy's weights at `policy_path`: bf16 where the stage trains in a bf16
    mode, fp32 where it trains in fp32 (then the log-probs it reports are the training forward's to float
    precision). Stages refresh its weights from the policy every iteration (`merged_weights`)."""
    from transformers import AutoModelForCausalLM

    from align.rollout import TextGenerator

    dtype = torch.bfloat16 if precision != "fp32" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype, use_safetensors=True)
    return TextGenerator(model.to(device), tokenizer, generation)


def old_logprobs_from_rollout(precision: str, old_logprobs: str) -> bool:
    """Whether the log-probs the rollout copy computed as it sampled serve as the old (behaviour) log-probs:
    always in fp32, where they are the training forward's; in bf16 when `train.old_logprobs` is rollout."""
    return precision == "fp32" or old_logprobs == "rollout"


@torch.no_grad()
def merged_weights(policy, adapted_layers_only: bool = False) -> dict[str, torch.Tensor]:
    """The policy's weights with LoRA deltas added (W + B A * scale), without modifying the policy itself.

    `adapted_layers_only` (with LoRA): only the transformer layers that hold adapters, each whole (its norms and
    unadapted products too: `DecoderEngine.load_weights` rebuilds whole layers); the rest never changes. With
    adapters on the top N layers, that is N layers' weights instead of the whole model's."""
    import peft

    if not isinstance(policy, peft.PeftModel):
        return state_of(policy)
    base = policy.get_base_model()
    adapted = {name: module for name, module in base.named_modules()
               if isinstance(module, peft.tuners.lora.LoraLayer) and "default" in module.lora_A}
    prefixes = ("",)
    if adapted_layers_only:
        from align.logprobs import decoder_body

        names = {id(module): name for name, module in base.named_modules()}
        layers = [names[id(layer)] + "." for layer in decoder_body(base).layers]
        prefixes = tuple(layer for layer in layers if any(name.startswith(layer) for name in adapted))
    weights = {k.replace(".base_layer.", "."): v for k, v in state_of(base).items()
               if "lora_" not in k and k.startswith(prefixes)}
    for name, module in adapted.items():
        weights[f"{name}.weight"] = module.get_base_layer().weight + module.get_delta_weight("default")
    return weights


# ---- the steps both RL stages take ----------------------------------------------------------------------------


class Completions(NamedTuple):
    """What step 1 of PPO and GRPO samples: per completion its prompt's chat-template tokens, its own tokens (EOS
    included when it stopped; never empty), its text, whether it stopped, and the rollout copy's log-prob of each
    of its tokens."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    sampled_logprobs: list[list[float]]
    sampled_states: list[torch.Tensor] | None  # with `states_at`: the input of that layer at every position the
    # rollout copy ran, [P + R - 1, hidden] (all but the last token), or None


def sample_completions(policy, generator, rows: list[dict], k: int, t, seed: int, first: int,
                       states_at: int | None = None) -> tuple[list[dict], Completions]:
    """k completions of each of `rows` from the current policy: its adapted layers (LoRA merged; every weight with
    full fine-tuning) are copied into the rollout copy `generator`, which samples with `t`'s settings and `seed`.
    The rows are prompts `first`, `first` + 1, ... of the iteration; completion j of prompt i is request
    (first + i) * k + j (`align.rollout.Sampler`). `states_at`: also keep that layer's input as the rollout copy
    ran it (`trunk_from_rollout`). Returns each completion's row (every row k times in a row) and the
    completions."""
    with gathered(policy):  # FSDP2: every process gathers the policy's shards (align.sharding)
        generator.load_weights(merged_weights(policy, adapted_layers_only=True))
    repeated = [row for row in rows for _ in range(k)]
    gens = generator.generate([row["prompt"] for row in repeated], max_new_tokens=t.max_new_tokens,
                              temperature=t.temperature, top_p=t.top_p, top_k=t.top_k, seed=seed,
                              first_request=first * k, states_at=states_at)
    # a completion without tokens reads as an immediate EOS, its log-prob 0 (the engine, the only backend that
    # keeps states, always samples one token at least)
    response_ids = [ids or [generator.tokenizer.eos_token_id] for ids in gens.token_ids]
    sampled = [lp or [0.0] for lp in gens.logprobs]
    return repeated, Completions(gens.prompt_ids, response_ids, gens.texts, gens.finished, sampled, gens.states)


DEMONSTRATE_WHEN = {  # which prompts get a demonstration, from their k responses' pass/fail per constraint
    "none_follows_all": lambda group: not any(all(response) for response in group),
    "a_constraint_none_follows": lambda group: not all(any(constraint) for constraint in zip(*group)),
}


def demonstrate_failed_prompts(rows: list[dict], completions: Completions, k: int, column: str, tokenizer,
                               max_new_tokens: int, when: str) -> tuple[Completions, list[int]]:
    """Off-policy guidance (LUFFY: Yan et al. 2025, "Learning to Reason under Off-Policy Guidance"): where a prompt's
    k responses fail it (`when`, strict checks of its constraints: none_follows_all, no response follows every
    constraint; a_constraint_none_follows, some constraint is followed by no response), its last response is
    replaced by the row's `column`, a reference answer, as if the policy had sampled it (its tokens + EOS,
    finished). The group then holds a response that does what was asked, to be judged against the others; a
    constraint the policy never follows otherwise gives no contrast to learn from. An answer longer than
    `max_new_tokens` is not used (the policy could not have ended it). `rows`: every row k times in a row, as
    `sample_completions` returns them. Returns the completions and the positions replaced; a replaced response has
    no sampled log-probs (`with_demonstrations` has the iteration's recomputed)."""
    from reward.functions import constraint_results

    passed = constraint_results([row["prompt"] for row in rows], completions.texts,
                                [row.get("constraints") for row in rows], loose=False)
    replacements = {}
    for last in range(k - 1, len(rows), k):
        group = passed[last - k + 1 : last + 1]  # [k][constraints] pass/fail, None without constraints
        if None in group or not DEMONSTRATE_WHEN[when](group):
            continue
        answer = rows[last][column]
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) <= max_new_tokens:
            replacements[last] = (ids, answer, True)
    return replace_completions(completions, replacements), list(replacements)


def replace_completions(completions: Completions, replacements: dict[int, tuple[list[int], str, bool]]) -> Completions:
    """`completions` with the completion at each position of `replacements` replaced by (token ids, text,
    finished); a replaced completion has no sampled log-probs (step 3 recomputes the iteration's)."""
    fields = {name: list(values) for name, values in completions._asdict().items() if name != "sampled_states"}
    for position, (ids, text, finished) in replacements.items():
        fields["response_ids"][position], fields["texts"][position] = ids, text
        fields["finished"][position], fields["sampled_logprobs"][position] = finished, None
    return Completions(**fields, sampled_states=completions.sampled_states)


def with_greedy_members(generator, rows: list[dict], completions: Completions, k: int,
                        t) -> tuple[Completions, list[int]]:
    """Step 1c of the RL stages: with `t.greedy_member`, the first completion of each prompt is replaced by the
    policy's greedy decode of it (the rollout copy, its weights already the current policy's), the answer
    evaluation will see. Sampled completions seldom loop where greedy decoding does, so without it the loops
    evaluation counts never get an advantage; in the group, the greedy answer is judged against the k - 1 samples
    and trained on as if sampled, under the same clipped ratio and KL. The rollout copy's log-probs and trunk
    states are then dropped and step 3 recomputes them. `rows`: every row k times in a row. Returns the
    completions and the positions replaced."""
    if not t.greedy_member:
        return completions, []
    firsts = range(0, len(rows), k)
    gens, response_ids = greedy_answers(generator, [rows[i]["prompt"] for i in firsts], t.max_new_tokens)
    replacements = {position: (ids, text, finished)
                    for position, ids, text, finished in zip(firsts, response_ids, gens.texts, gens.finished)}
    greedy = replace_completions(completions, replacements)
    return greedy._replace(sampled_logprobs=None, sampled_states=None), list(replacements)


def with_demonstrations(rows: list[dict], completions: Completions, k: int, t,
                        tokenizer) -> tuple[Completions, list[int]]:
    """Step 1b of the RL stages: with `t.demonstration_column`, `demonstrate_failed_prompts` on this process's
    completions; when any process replaced a response, every process drops the rollout copy's log-probs and trunk
    states, and step 3 recomputes them (the same passes on every process, as FSDP2 needs). Returns the completions
    and the positions replaced here."""
    if not t.demonstration_column:
        return completions, []
    completions, replaced = demonstrate_failed_prompts(rows, completions, k, t.demonstration_column, tokenizer,
                                                       t.max_new_tokens, t.demonstrate_when)
    if global_sum(len(replaced)):
        completions = completions._replace(sampled_logprobs=None, sampled_states=None)
    return completions, replaced


def loop_share_at(texts: list[str], positions: list[int]) -> float:
    """The share of every process's completions at `positions` (this process's) that are repetition loops
    (reward.degeneration.repetition_loop)."""
    from reward.degeneration import repetition_loop

    return global_mean(torch.tensor([repetition_loop(texts[i]) for i in positions], dtype=torch.float32))


def demonstrated_share(completions: int, demonstrated: list[int]) -> float:
    """The share of every process's completions that were demonstrations (`with_demonstrations`)."""
    return global_mean(torch.tensor([i in demonstrated for i in range(completions)], dtype=torch.float32))


def check_demonstrations(rows: list[dict], column: str, source: str) -> None:
    """Every row has a non-empty reference answer in `column` and a `constraints` column to judge its responses by
    (`demonstrate_failed_prompts`), else a one-line error naming the first row that has not; nothing to check
    without a column."""
    for number, row in enumerate(rows if column else [], 1):
        if not isinstance(row.get(column), str) or not row[column].strip():
            raise ConfigError(f"train.demonstration_column={column!r}: row {number} of {source} has no answer text in "
                              f"column {column!r} (its columns: {', '.join(sorted(row))})")
        if row.get("constraints") is None:
            raise ConfigError(f"train.demonstration_column={column!r}: row {number} of {source} has no 'constraints' "
                              f"column, which decides the prompts a demonstration replaces a response of")


def trunk_from_rollout(trunk_states: str, trunk_layers: int | None, generator, stage: str) -> bool:
    """Whether the frozen trunk's states come from the rollout copy (`train.trunk_states` rollout, a frozen trunk
    to run, and a generator that keeps states); said once."""
    if trunk_states != "rollout" or not trunk_layers:
        return False
    if not generator.keeps_states:
        print(f"[align] {stage}: train.trunk_states is rollout, but generation.backend {generator.backend} keeps no "
              f"states; the frozen layers run after sampling")
        return False
    print(f"[align] {stage}: the frozen layers' output comes from the rollout copy as it samples "
          f"(train.trunk_states: rollout)")
    return True


def iteration_trunk(policy, layers: int, sequences: list[list[int]], sampled_states, pack_length: int,
                    groups: list[tuple[int, ...]]) -> Trunk:
    """Step 3's frozen-trunk states of `sequences` (prompt + response): those the rollout copy kept as it sampled
    (`sampled_states`, `align.logprobs.rollout_trunk`), else one run of the policy's frozen layers."""
    if sampled_states is not None:
        dtype = policy.get_input_embeddings().weight.dtype  # what the policy's own layers pass on
        return rollout_trunk(layers, sampled_states, sequences, dtype)
    return trunk_states(policy, sequences, layers, pack_length, groups)


class GreedyLoops(NamedTuple):
    """The greedy continuations of an iteration's prompts from the rollout copy, and which of them loop."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]  # never empty
    looping: list[bool]  # a repetition loop (reward.degeneration.repetition_loop)
    candidates: list[list[bool]]  # per token: part of a repeated 4-gram (align.losses.repeated_ngram_tokens)

    @property
    def loop_share(self) -> float:
        return sum(self.looping) / max(1, len(self.looping))


def greedy_loops(generator, rows: list[dict], max_new_tokens: int) -> GreedyLoops:
    """Decode `rows`' prompts greedily with the rollout copy (its weights already the current policy's, as after
    `sample_completions`): the loops evaluation will see, which sampled rollouts rarely show."""
    gens, response_ids = greedy_answers(generator, [row["prompt"] for row in rows], max_new_tokens)
    return loops_of(gens.prompt_ids, response_ids, gens.texts)


def greedy_answers(generator, prompts: list, max_new_tokens: int):
    """The rollout copy's greedy answers to `prompts`: its generations, and each answer's tokens (an empty answer
    reads as an immediate EOS, as in `sample_completions`)."""
    gens = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    return gens, [ids or [generator.tokenizer.eos_token_id] for ids in gens.token_ids]


def greedy_loops_in(completions, positions: list[int]) -> GreedyLoops:
    """`greedy_loops` of the greedy answers already among `completions` (a Rollout or Groups) at `positions`
    (`with_greedy_members`), without decoding them again."""
    return loops_of([completions.prompt_ids[i] for i in positions], [completions.response_ids[i] for i in positions],
                    [completions.texts[i] for i in positions])


def loops_of(prompt_ids: list[list[int]], response_ids: list[list[int]], texts: list[str]) -> GreedyLoops:
    """Greedy continuations with which of them loop and their repeated 4-grams."""
    from align.losses import repeated_ngram_tokens
    from reward.degeneration import repetition_loop

    return GreedyLoops(prompt_ids, response_ids, [repetition_loop(text) for text in texts],
                       [repeated_ngram_tokens(ids, n=4) for ids in response_ids])


def same_prompt(completions, k: int) -> list[tuple[int, ...]]:
    """Positions in `completions` (indices of an iteration's completions, k per prompt in order) grouped by their
    prompt, for the passes that compute a shared prompt once (`align.batching.flat_passes`)."""
    by_prompt: dict[int, list[int]] = {}
    for position, completion in enumerate(completions):
        by_prompt.setdefault(int(completion) // k, []).append(position)
    return [tuple(positions) for positions in by_prompt.values() if len(positions) > 1]


def penalised_scores(reward_fn, rows: list[dict], texts: list[str], completion_ids: list[list[int]],
                     finished: list[bool], columns: list[str], missing_eos_penalty: float, state):
    """The composite reward of each completion, its functions called as TRL calls them
    (`align.rewards.score_completions`; `state`: the trainer_state they get), minus `missing_eos_penalty` for one
    that never emitted EOS. Returns (breakdown, reward log, scores [B])."""
    from align.rewards import score_completions

    breakdown, log = score_completions(reward_fn, rows, texts, completion_ids, columns, state)
    unfinished = 1 - torch.tensor(finished, dtype=torch.float32)
    return breakdown, log, torch.tensor(breakdown.total, dtype=torch.float32) - missing_eos_penalty * unfinished


def check_prompt_split(prompts_per_iteration: int, processes: int) -> None:
    """An iteration's prompts (counted over every process) split evenly between the processes: each samples its
    own contiguous share (`iteration_prompts`)."""
    if prompts_per_iteration < processes or prompts_per_iteration % processes:
        raise ConfigError(f"train.prompts_per_iteration={prompts_per_iteration} must be a multiple of the "
                          f"{processes} processes (it counts the prompts of every process, split evenly between them)")


def minibatch_updates(training, indices: torch.Tensor, passes: int, minibatch_size: int, seed: int,
                      loss_of) -> dict[str, float]:
    """`passes` passes over the samples of every process in shuffled minibatches of `minibatch_size`, an
    optimiser step each. This process holds `indices` (its samples, contiguous in process order); the shuffle
    (drawn from `seed`, the same on every process) is over the samples of every process together, so N processes
    take the steps one process holding every sample would. Each process trains on the samples of a minibatch it
    holds: `loss_of(idx, real=True)` -> (loss with gradients, stats), the loss and stats this process's part of
    the minibatch's (align.distributed.count_share); a process that holds none of them calls
    `loss_of(tensor([0]), real=False)`, which must weigh sample 0 by 0 and still reach every parameter (DDP's
    all-reduce waits for every process). Returns the mean of every statistic (and the gradient norm) over the
    minibatches and the processes; {} when no process has anything to train on. Call it on every process."""
    from align.distributed import global_offset, mean_over_processes, process_part

    stats: dict[str, list[float]] = {}
    generator = torch.Generator().manual_seed(seed)
    offset, total = global_offset(len(indices))
    for _ in range(passes if total else 0):
        for minibatch in torch.randperm(total, generator=generator).split(minibatch_size):
            mine = process_part(minibatch, offset, len(indices))
            real = len(mine) > 0
            loss, step_stats = loss_of(indices[mine] if real else torch.zeros(1, dtype=torch.long), real=real)
            training.backward(loss)
            grad_norm = training.optimizer_step(loss.item())
            for key, value in {**step_stats, "grad_norm": grad_norm}.items():
                stats.setdefault(key, []).append(value)
    return mean_over_processes({key: sum(values) / len(values) for key, values in stats.items()})


def pad_right(sequences: list[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [R_i] -> ([B, R_max] padded, [B, R_max] mask)."""
    width = max(1, max(len(s) for s in sequences))
    out = torch.full((len(sequences), width), value, dtype=torch.float32)
    mask = torch.zeros((len(sequences), width), dtype=torch.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s.detach().float().cpu()
        mask[i, : len(s)] = 1.0
    return out, mask


WINDOW_METRICS = ("kl", "eos_rate", "loop_share", "response_length", "reward/total")  # what an RL manifest's
# `windows` report: how far the policy moved, and whether it learnt to stop instead of looping


def read_logged(out: Path) -> list[dict]:
    """Every line a stage logged to its metrics.jsonl, in order."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def window_means(logged: list[dict], prefix: str, names: tuple[str, ...] = WINDOW_METRICS,
                 windows: int = 4) -> list[dict]:
    """How a run moved: the logged iterations (lines of `read_logged` with `prefix`kl) cut into `windows` spans of
    consecutive iterations as equal as they go, each with its first and last step and the mean of every metric of
    `names` (without `prefix`) logged in it."""
    rows = [row for row in logged if f"{prefix}kl" in row]
    spans = [span for span in (rows[len(rows) * i // windows: len(rows) * (i + 1) // windows]
                               for i in range(windows)) if span]
    summary = []
    for span in spans:
        values = {name: [row[prefix + name] for row in span if prefix + name in row] for name in names}
        summary.append({"steps": [span[0].get("step"), span[-1].get("step")],
                        **{name: sum(v) / len(v) if v else None for name, v in values.items()}})
    return summary


def last_metrics(logged: list[dict]) -> dict:
    """The last logged value of every metric of a stage (lines of `read_logged`)."""
    last: dict = {}
    for row in logged:
        last.update(row)
    return last
