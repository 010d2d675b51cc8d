"""Alignment: a reward model learned from preferences, and three ways to move a policy towards it (PPO, DPO, GRPO).

Log-probabilities. Every method here compares how likely a response is under two models. With logits z_t
(predicting token t) and the token y_t that was actually there,

    log π(y_t) = log softmax(z_t)[y_t]            `token_logprobs`
    log π(y)   = Σ_t m_t · log π(y_t)             `sequence_logprob`, m_t = 1 on the response, 0 elsewhere

Reward model (Bradley–Terry). People compare two answers to one prompt; the model learns a score r(x, y) such that
P(chosen ≻ rejected) = σ(r_c − r_r). It is the chapter-7 decoder with a linear head `score` (d_model -> 1) read at
the last real token of each sequence, and it is fitted by maximum likelihood:

    L_BT = −mean log σ(r_c − r_r)                 log 2 at equal rewards, → 0 as the margin grows

RLHF with PPO. The policy π_θ generates a response; each token t gets the reward

    r_t = −β_KL · KL_t  (+ the reward model's score on the last response token)     `ppo_rewards`

where KL_t estimates how far π_θ moved from the frozen reference π_ref at that token (`kl_penalty`, with
d = log π_θ − log π_ref on the sampled token):

    k1 = d                unbiased for KL(π_θ ‖ π_ref), but often negative (high variance)
    k2 = d²/2             always ≥ 0, biased (close to the KL while the policies are close)
    k3 = e^(−d) − 1 + d   always ≥ 0 and unbiased (E_π_θ[e^(−d)] = 1)

A value model V_t predicts the return; generalized advantage estimation (`gae`) blends the TD residuals
δ_t = r_t + γ V_{t+1} − V_t into

    A_t = δ_t + γλ A_{t+1} = Σ_l (γλ)^l δ_{t+l},        R_t = A_t + V_t (the value model's target)

computed backwards over the response; the episode ends at its last token (V after it counts as 0).
λ = 0 gives the one-step TD residual (low variance, biased by V), λ = 1 the full discounted return minus V.
PPO then takes several gradient steps on the same samples with the probability ratio ρ_t = π_θ / π_old:

    L_policy = −mean_t min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)                      `ppo_policy_loss`
    L_value  = ½ mean_t max((V_t − R_t)², (V_old + clip(V_t − V_old, −ε, ε) − R_t)²)  `ppo_value_loss`

The min makes the objective pessimistic: once the ratio has moved past 1 ± ε in the direction the advantage
rewards, that token's term is a constant and its gradient is exactly 0, so no step moves the policy far from the
one that sampled the data. `entropy` (mean token entropy) is usually logged, sometimes added as a bonus.

DPO. The optimal policy of the KL-regularised problem is π*(y) ∝ π_ref(y) e^(r(y)/β), so r(y) = β log π*(y)/π_ref(y)
+ const: the policy itself defines an implicit reward, and Bradley–Terry on it needs neither a reward model nor
sampling:

    r̂_c = β (log π_θ(y_c) − log π_ref(y_c)),  r̂_r likewise,  L_DPO = −mean log σ(r̂_c − r̂_r)   `dpo_loss`

GRPO. No value model: sample G responses per prompt, score them, and use the group as the baseline,

    Â_i = (r_i − mean(r_group)) / (std(r_group) + eps)          `grpo_advantages`

for every token of response i, in PPO's clipped objective (`grpo_loss`), with an optional k3 penalty towards the
reference inside the loss instead of in the reward.

Masks. Every per-token tensor is (B, T) with a mask (B, T), True (or 1) on the tokens that count (the response),
False on the prompt and padding; masked entries are never read. Half-precision inputs are computed in float32.

Left out: the sampling loop, the optimizer steps and the schedules of these losses (the trainer's job), advantage
whitening, reward normalisation, adaptive KL coefficients, IPO / KTO / ORPO / SimPO, label smoothing (cDPO),
Dr. GRPO's length-unbiased normalisation, and process (per-step) rewards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Linear, log_softmax
from .model import Decoder, ModelConfig, Transformer

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "sequence")


# BEGIN SOLUTION
def _wide(x: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _clipped_objective(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """PPO's per-token objective min(ρA, clip(ρ, 1 − ε, 1 + ε)A) and where the clipped term is the smaller one."""
    ratio = torch.exp(logp - old_logp)  # π_θ / π_old on the sampled token
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return torch.minimum(unclipped, clipped), clipped < unclipped
# END SOLUTION


# ------------------------------------------------------------------------------------------ log-probabilities


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] at every position: logits (..., V), targets (...) integer ids -> (...).

    The caller lines them up: for ids (B, T) and logits = model(ids), the targets of logits[:, :-1] are ids[:, 1:].
    Computed with `log_softmax` (never softmax(...).log(), which gives −inf where a probability underflows), in
    float32 at least. Logits whose shape is not targets' plus one dimension are a ValueError.
    Example: logits [[0., 0.]], targets [1] -> [−log 2]
    """
    # BEGIN SOLUTION
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus one vocabulary "
                         "dimension")
    log_probs = log_softmax(_wide(logits), dim=-1)  # (..., V)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # END SOLUTION


def sequence_logprob(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """log π(response) = Σ_t mask_t · log π(target_t): logits (B, T, V), targets (B, T), mask (B, T) -> (B,).

    Targets outside the mask are never looked up, so they may be anything (the -100 of padding, say).
    """
    # BEGIN SOLUTION
    mask = mask.bool()
    safe_targets = torch.where(mask, targets, 0)  # any valid id where the mask is off: dropped below
    return torch.where(mask, token_logprobs(logits, safe_targets), 0.0).sum(-1)
    # END SOLUTION


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of `values` where `mask` is True (or 1), a scalar; entries outside the mask are never read.

    Half precision is averaged in float32. An empty mask has nothing to average: NaN (0/0), as in torch.
    Example: masked_mean([1., 2., 9.], [True, True, False]) -> 1.5
    """
    # BEGIN SOLUTION
    mask = mask.bool()
    return torch.where(mask, _wide(values), 0.0).sum() / mask.sum()
    # END SOLUTION


# ----------------------------------------------------------------------------------------------- reward model


class RewardModel(nn.Module):
    """The chapter-7 decoder with a scalar head: ids (B, T), lengths (B,) -> one reward per sequence (B,).

    r = score(h[b, lengths[b] − 1]), where h = model(ids) are the decoder's final (normed) hidden states and
    score is Linear(d_model, 1, bias=False). Sequences are padded on the right; the decoder is causal, so the
    hidden state of the last real token never sees the padding. The parameter names are those of Hugging Face's
    LlamaForSequenceClassification (`model.layers.0.self_attn.q_proj.weight`, ..., `score.weight`): the decoder
    of a trained Transformer loads one to one, `reward_model.model.load_state_dict(lm.model.state_dict())`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.score = Linear(config.d_model, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The Transformer's initialisation (GPT-2's); score.weight is a matrix like the others: normal(0, init_std)."""
        Transformer.reset_parameters(self)

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """input_ids (B, T), lengths (B,) of real tokens per row (None: every row is T long) -> rewards (B,).

        A length outside 1..T, a length per row missing, or T beyond the context (max_seq_len) is a ValueError.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        # BEGIN SOLUTION
        batch, length = input_ids.shape
        if length > self.config.max_seq_len:
            raise ValueError(f"a sequence of {length} tokens does not fit the context of "
                             f"max_seq_len = {self.config.max_seq_len}")
        if lengths is None:
            lengths = torch.full((batch,), length)
        lengths = torch.as_tensor(lengths, device=input_ids.device)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must hold one length per row: shape ({batch},), got {tuple(lengths.shape)}")
        bad = (lengths < 1) | (lengths > length)
        if bad.any():
            raise ValueError(f"length {int(lengths[bad][0])} is outside 1..{length}: a reward is read at the last "
                             "real token, and a sequence needs one")
        hidden = self.model(input_ids)  # (B, T, d_model)
        last = hidden[torch.arange(batch, device=input_ids.device), lengths - 1]  # (B, d_model)
        return self.score(last).squeeze(-1)  # (B,)
        # END SOLUTION


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """−mean log σ(chosen − rejected): the negative log-likelihood of the preferences under Bradley–Terry.

    chosen, rejected (N,) rewards of the preferred and the other answer of each pair -> a scalar.
    log σ(m) = −log(1 + e^(−m)) is computed in the form that never overflows, min(m, 0) − log(1 + e^(−|m|))
    (torch's logsigmoid): log(sigmoid(m)) is −inf once σ(m) underflows to 0 (m ≈ −104 in float32), and the
    loss of such a pair is |m|, not infinity. Half precision is computed in float32.
    Example: bradley_terry_loss([1.], [1.]) -> log 2 ≈ 0.6931
    """
    # BEGIN SOLUTION
    margin = _wide(chosen) - _wide(rejected)  # (N,)
    return -F.logsigmoid(margin).mean()
    # END SOLUTION


def preference_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """The fraction of pairs whose chosen reward is strictly above the rejected one (a tie ranks nothing): a
    scalar in [0, 1].  Example: preference_accuracy([2., 1., 0.], [1., 1., 1.]) -> 1/3"""
    # BEGIN SOLUTION
    return (chosen > rejected).float().mean()
    # END SOLUTION


def preference_pairs(records: Iterable[Mapping]) -> list[tuple]:
    """Check preference records and return them as (prompt, chosen, rejected) tuples, in order.

    Each record is a mapping with "prompt", "chosen" and "rejected" (texts, or lists of token ids). A record
    without one of them, or whose two answers are identical (a pair that prefers nothing: it pulls both rewards
    the same way and teaches noise), is a ValueError naming the record's index and the problem.
    """
    # BEGIN SOLUTION
    pairs = []
    for index, record in enumerate(records):
        missing = [key for key in ("prompt", "chosen", "rejected") if key not in record]
        if missing:
            raise ValueError(f"preference record {index} has no {missing}: each needs prompt, chosen and rejected")
        if record["chosen"] == record["rejected"]:
            raise ValueError(f"preference record {index} has identical chosen and rejected answers: a pair must "
                             "prefer one answer to a different one")
        pairs.append((record["prompt"], record["chosen"], record["rejected"]))
    return pairs
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------- the KL


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """A per-token estimate of KL(π ‖ π_ref) from the log-probabilities of tokens sampled from π, elementwise.

    With d = logp − ref_logp:  "k1": d;  "k2": d²/2;  "k3": exp(−d) − 1 + d.
    Averaged over samples from π, k1 and k3 equal the KL exactly; k2 does not, but it is never negative, and
    neither is k3 (e^x ≥ 1 + x). An unknown estimator is a ValueError naming the known ones.
    Example: kl_penalty(log 0.5, log 0.25, "k3") -> 0.5 − 1 + log 2 ≈ 0.1931
    """
    # BEGIN SOLUTION
    log_ratio = _wide(ref_logp) - _wide(logp)  # log π_ref / π = −d
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: choose one of {KL_ESTIMATORS}")
    # END SOLUTION


# ------------------------------------------------------------------------------------------------------- PPO


def ppo_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float = 0.1,
                estimator: str = "k1") -> Tensor:
    """Per-token rewards (B, T) for PPO: −kl_coef · kl_penalty(logp, ref_logp, estimator) on every response token,
    plus the reward model's score (B,) on the last token of each response; 0 outside the mask.

    Row b's rewards sum to score[b] − kl_coef · Σ_t KL_t. A row whose mask is empty has no last token: ValueError.
    """
    # BEGIN SOLUTION
    mask = mask.bool()
    batch, length = mask.shape
    empty = ~mask.any(-1)  # (B,)
    if empty.any():
        raise ValueError(f"row {int(empty.nonzero()[0])} has no response token in its mask: the score is paid on "
                         "the last one, and every row needs one")
    kl = kl_penalty(logp, ref_logp, estimator)  # (B, T)
    rewards = torch.where(mask, -kl_coef * kl, 0.0)
    positions = torch.arange(length, device=mask.device).expand(batch, length)
    last = torch.where(mask, positions, -1).amax(-1)  # (B,) the last response token of each row
    at_last = positions == last[:, None]  # (B, T), one True per row
    return rewards + torch.where(at_last, _wide(score)[:, None], 0.0)
    # END SOLUTION


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation: rewards, values, mask (B, T) -> (advantages, returns), each (B, T).

    Backwards over t, with m_t the mask:

        δ_t = r_t + γ · m_{t+1} V_{t+1} − V_t          (V past the end, and past a masked position, counts as 0)
        A_t = δ_t + γλ · m_{t+1} A_{t+1}
        R_t = A_t + V_t

    so A_t = Σ_l (γλ)^l δ_{t+l} over the run of unmasked positions that t belongs to: each run is an episode that
    ends at its last token, and nothing is bootstrapped past it. Masked positions get 0 in both outputs, and their
    rewards and values are never read. Half precision is computed in float32.
    """
    # BEGIN SOLUTION
    mask = mask.bool()
    rewards, values = _wide(rewards), torch.where(mask, _wide(values), 0.0)  # masked rewards: only in discarded δ
    length = rewards.shape[-1]
    next_value = torch.zeros_like(values[..., 0])  # V_{t+1} · m_{t+1}: 0 after the last token
    next_advantage = torch.zeros_like(values[..., 0])  # A_{t+1} · m_{t+1}
    advantages = [None] * length
    for t in reversed(range(length)):  # backwards: A_t needs A_{t+1}
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        advantage = torch.where(mask[..., t], delta + gamma * lam * next_advantage, 0.0)
        advantages[t] = advantage
        next_value, next_advantage = values[..., t], advantage  # both 0 where t is masked: the episode ends
    advantages = torch.stack(advantages, dim=-1)  # (B, T)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns
    # END SOLUTION


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                    clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate: −masked mean of min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t), ρ = exp(logp − old_logp).

    logp (B, T) of the policy being trained, old_logp and advantages (B, T) from when the data was sampled (they are
    data: detach them), mask (B, T) -> (loss, clip_fraction), two scalars. clip_fraction is the share of the
    masked tokens whose clipped term is the smaller one: those whose gradient the clip sets to exactly 0 (ρ past
    1 + ε with A > 0, or below 1 − ε with A < 0). At ρ = 1 the loss is −mean(A) and its gradient −A/N per token.
    """
    # BEGIN SOLUTION
    objective, clipped = _clipped_objective(_wide(logp), _wide(old_logp), _wide(advantages), clip)
    return -masked_mean(objective, mask), masked_mean(clipped.to(objective.dtype), mask)
    # END SOLUTION


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """½ · masked mean of max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²), a scalar; all inputs (B, T).

    The max keeps the larger error: a value that has moved more than ε from V_old towards the return is charged as
    if it had stopped at V_old ± ε, a constant, so its gradient is 0 and one batch cannot drag it further.
    """
    # BEGIN SOLUTION
    values, old_values, returns = _wide(values), _wide(old_values), _wide(returns)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    errors = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(errors, mask)
    # END SOLUTION


def entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """The mean over masked tokens of H_t = −Σ_v p_v log p_v, p = softmax(logits_t): logits (B, T, V), mask (B, T)
    -> a scalar. log p from `log_softmax`, so a probability that underflows to 0 adds 0, not 0 · (−inf) = NaN."""
    # BEGIN SOLUTION
    log_probs = log_softmax(_wide(logits), dim=-1)  # (B, T, V)
    per_token = -(log_probs.exp() * log_probs).sum(-1)  # (B, T)
    return masked_mean(per_token, mask)
    # END SOLUTION


# ------------------------------------------------------------------------------------------------------- DPO


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference optimisation: Bradley–Terry on the implicit rewards β · (log π_θ − log π_ref).

    Inputs (N,): sequence log-probabilities (`sequence_logprob`) of the chosen and rejected responses under the
    policy and the frozen reference. Returns (loss, chosen_rewards, rejected_rewards): the scalar
    −mean log σ(r̂_c − r̂_r) and the implicit rewards r̂ (N,) each. When the policy is the reference every r̂ is 0
    and the loss is log 2; β is the strength of the implicit KL constraint (small β: the policy may move far).
    """
    # BEGIN SOLUTION
    chosen_rewards = beta * (_wide(policy_chosen) - _wide(ref_chosen))
    rejected_rewards = beta * (_wide(policy_rejected) - _wide(ref_rejected))
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards, rejected_rewards
    # END SOLUTION


# ------------------------------------------------------------------------------------------------------ GRPO


def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages: rewards (N,), consecutive groups of `group_size` responses to one prompt -> (N,).

        Â_i = (r_i − mean(group)) / (std(group) + eps)

    std is the sample standard deviation (Bessel's n − 1, torch's default, as in DeepSeekMath), so the advantages
    of a group have mean 0 and sample std 1 (up to eps). A group whose rewards are all equal teaches nothing: its
    advantages are 0 (eps keeps 0/0 away). A group needs 2 responses at least (the sample std of one is 0/0), and
    N must be a whole number of groups: otherwise a ValueError. Half precision is computed in float32.
    Example: grpo_advantages([1., 0., 1., 1.], 2) -> [0.7071, −0.7071, 0., 0.]
    """
    # BEGIN SOLUTION
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of group_size = {group_size}: "
                         "need group_size >= 2 dividing the number of rewards")
    groups = _wide(rewards).reshape(-1, group_size)  # (N / G, G)
    mean = groups.mean(-1, keepdim=True)
    std = groups.std(-1, keepdim=True)  # unbiased: Σ (r − mean)² / (G − 1)
    return ((groups - mean) / (std + eps)).reshape(rewards.shape)
    # END SOLUTION


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2,
              ref_logp: Tensor | None = None, kl_coef: float = 0.0,
              aggregation: str = "token") -> tuple[Tensor, Tensor]:
    """GRPO's clipped objective: PPO's surrogate with one advantage per response, minus an optional k3 penalty.

    logp, old_logp, ref_logp, mask (B, T); advantages (B,) (`grpo_advantages`, one per response, spread over its
    tokens) or (B, T). Per token, o_t = min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A) − kl_coef · k3(logp, ref_logp), and
    the loss is −(the mean of o) over

        "token"     every masked token of the batch together: each token weighs the same, so a long response
                    counts as much as its length (DAPO's choice; llmkata's default);
        "sequence"  each response's tokens, then the responses: each response weighs the same, and the tokens of
                    a long one weigh less each (the original GRPO).

    Returns (loss, clip_fraction) as ppo_policy_loss does. kl_coef > 0 without ref_logp, or an unknown aggregation,
    is a ValueError.

    Why the loss reads ≈ 0 and still trains: in the first step on fresh samples ρ = 1, so o_t = A_i, and the
    group-normalised advantages sum to 0 in every group: the loss is (about, exactly with "sequence") 0. Its
    gradient is not: d o_t / d logp_t = ρ_t A_i = A_i, the policy gradient, which raises the log-probability of
    every token of a better-than-average response and lowers those of a worse one. The loss value says nothing
    about progress here; watch the rewards.
    """
    # BEGIN SOLUTION
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}: choose one of {AGGREGATIONS}")
    mask = mask.bool()
    advantages = _wide(advantages)
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1): one advantage for every token of a response
    objective, clipped = _clipped_objective(_wide(logp), _wide(old_logp), advantages.expand_as(mask), clip)
    if kl_coef:
        if ref_logp is None:
            raise ValueError(f"kl_coef = {kl_coef} needs ref_logp, the reference's log-probabilities")
        objective = objective - kl_coef * kl_penalty(logp, ref_logp, "k3")
    if aggregation == "token":
        loss = -masked_mean(objective, mask)
    else:
        per_response = torch.where(mask, objective, 0.0).sum(-1) / mask.sum(-1)  # (B,)
        loss = -per_response.mean()
    return loss, masked_mean(clipped.to(objective.dtype), mask)
    # END SOLUTION
