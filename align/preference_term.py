"""A DPO term on preference pairs, added to PPO's policy loss at every optimiser step (`train.preference_pairs`).

PPO learns only from what its policy samples, and some of what a reward model learnt from its pairs never shows in
those samples: a sampled answer at PPO's temperature almost never loops, where the greedy answer evaluation sees
does (docs/RESULTS.md). The pairs themselves hold such answers as the rejected side. This term trains on them
directly, as InstructGPT's PPO-ptx mixes a second objective into PPO's (Ouyang et al. 2022, eq. 2):

    L = L_PPO + c_pref * L_DPO,    L_DPO = -mean log sigmoid(beta * h)    (Rafailov et al. 2023, eq. 7)

with h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)], pi_ref PPO's own reference (the
starting policy). Each optimiser step takes the next `preference_pairs_per_step` pairs of a seeded shuffle that
depends only on the step's number, so a resumed run sees the pairs it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.data import load_rows
from align.distributed import ddp_scale, process_index, processes, share_loss_sum, step_share
from align.dpo import DPOTrainConfig, pair_layout, pair_logps, pair_stats, policy_logps, tokenize_pairs
from align.logprobs import FrozenReference, trunk_states
from align.loop import epoch_permutation
from align.losses import dpo_sigmoid_loss
from align.precision import autocast
from align.sharding import gathered


@dataclass
class PreferenceTerm:
    """The pairs and settings of the term; `loss` computes it for one optimiser step."""

    pairs: list[tuple[list[int], list[int], list[int]]]  # (prompt, chosen, rejected) token ids
    reference: FrozenReference  # PPO's reference: the starting policy
    per_step: int  # pairs per optimiser step, every process together
    beta: float  # DPO's beta: the strength of the implicit KL constraint to the reference
    seed: int  # the shuffle's seed (the run's)
    pack_length: int
    trunk_layers: int | None  # frozen layers below the adapters, run once for the policy and the reference

    def step_pairs(self, step: int) -> list[int]:
        """The indices of optimiser step `step`'s pairs (every process's): positions step * per_step, ... of the
        concatenated shuffles of the pairs (epoch e shuffled with the seed and e)."""
        n, start = len(self.pairs), step * self.per_step
        first_epoch, last_epoch = start // n, (start + self.per_step - 1) // n  # the shuffles the step reaches into
        order = [i for epoch in range(first_epoch, last_epoch + 1) for i in epoch_permutation(n, self.seed, epoch)]
        return order[start - first_epoch * n :][: self.per_step]

    def loss(self, policy, raw_policy, step: int, device, precision: str) -> tuple[torch.Tensor, dict[str, float]]:
        """This process's part of the DPO loss of step `step`'s pairs (with gradients through `policy`; `raw_policy`
        unwrapped, for the passes without them), and its statistics (DPO's implicit rewards, margin and accuracy),
        this process's part of their means."""
        mine, real = step_share(self.step_pairs(step), process_index(), processes())
        pairs = [self.pairs[i] for i in mine]
        trunk = None
        # FSDP2: the reference's pass and the frozen layers' with the shards gathered, as PPO's own (align.sharding)
        with torch.no_grad(), gathered(raw_policy), autocast(device, precision):
            if self.trunk_layers:  # the frozen layers' output, once for the reference and the policy
                prompts, responses, shared = pair_layout(pairs)  # the sequences `pair_logps` computes
                trunk = trunk_states(raw_policy, [p + r for p, r in zip(prompts, responses)], self.trunk_layers,
                                     self.pack_length, shared)
            ref_c, ref_r = pair_logps(_with_trunk(self.reference.logprobs, trunk), pairs, self.pack_length, False)
        with autocast(device, precision):
            pol_c, pol_r = pair_logps(_with_trunk(policy_logps(policy), trunk), pairs, self.pack_length, False)
        outputs = (pol_c.float().cpu(), pol_r.float().cpu(), ref_c.float().cpu(), ref_r.float().cpu())
        # this process's part of the mean over the step's pairs on every process, as DPO's (align.distributed)
        loss = share_loss_sum(lambda *o: dpo_sigmoid_loss(*o, self.beta), real, *outputs) * ddp_scale(self.per_step)
        # the statistics likewise: this process's means weighted by its share of the pairs (a process without pairs
        # of its own logs its padding copy's, weighted 0)
        share = real * processes() / self.per_step
        stats = pair_stats(*(o[:max(real, 1)].detach() for o in outputs), self.beta)
        return loss, {f"preference/{name}": value * share for name, value in stats.items()}


def _with_trunk(logprobs_fn, trunk):
    """`logprobs_fn` that starts from `trunk`'s states (None: from the embeddings)."""
    return lambda *args, **kwargs: logprobs_fn(*args, trunk=trunk, **kwargs)


def load_preference_term(cfg, tokenizer, reference: FrozenReference, trunk_layers: int | None
                         ) -> PreferenceTerm | None:
    """The term of a PPO config `cfg` (its `train.preference_pairs`, read as `data.train` is read), or None when
    that is null."""
    t = cfg.train
    if not t.preference_pairs:
        return None
    rows, report = load_rows(t.preference_pairs, "preference", cfg.data)
    lengths = DPOTrainConfig()  # the prompt and response lengths DPO cuts its pairs to
    pairs, _ = tokenize_pairs(tokenizer, rows, lengths.max_prompt_length, lengths.max_response_length)
    print(f"[align] ppo: a DPO term (weight {t.preference_coef}, beta {t.preference_beta}) on "
          f"{t.preference_pairs_per_step} pairs a step from {report.source}: {len(pairs)} pairs")
    return PreferenceTerm(pairs, reference, t.preference_pairs_per_step, t.preference_beta, cfg.run.seed,
                          t.pack_length, trunk_layers)
