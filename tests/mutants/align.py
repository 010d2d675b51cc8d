"""Wrong implementations of the align chapter that a learner could plausibly write."""

import torch
import torch.nn.functional as F

import llmkata.reference.align as ref

from . import mutant


def _named(name, cls):
    cls.__name__ = cls.__qualname__ = name
    return cls


def _wide(x):
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _mean(values, mask):
    mask = mask.bool()
    return torch.where(mask, _wide(values), 0.0).sum() / mask.sum()


# ------------------------------------------------------------------------------------------ log-probabilities


@mutant("align.token_logprobs", "test_token_logprobs_are_finite_at_logits_of_1e4",
        why="softmax, then log: a probability that underflows to 0 gives −inf")
def token_logprobs_logging_the_softmax(logits, targets):
    return torch.softmax(_wide(logits), -1).log().gather(-1, targets[..., None]).squeeze(-1)


@mutant("align.token_logprobs", "test_token_logprobs_equal_log_softmax_at_the_target",
        why="the logit of the target, not its log-probability")
def token_logprobs_picking_the_logit(logits, targets):
    return _wide(logits).gather(-1, targets[..., None]).squeeze(-1)


@mutant("align.token_logprobs", "test_token_logprobs_equal_log_softmax_at_the_target",
        why="bfloat16 logits computed in bfloat16")
def token_logprobs_in_bfloat16(logits, targets):
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)


@mutant("align.token_logprobs", "test_token_logprobs_reject_logits_that_do_not_fit_the_targets",
        why="no shape check: gather picks whatever the index reaches")
def token_logprobs_unchecked(logits, targets):
    return torch.log_softmax(_wide(logits), -1).gather(-1, targets[..., None]).squeeze(-1)


@mutant("align.sequence_logprob", "test_sequence_logprob_sums_token_logprobs_over_the_mask",
        why="the mean over the mask, not the sum")
def sequence_logprob_averaging(logits, targets, mask):
    mask = mask.bool()
    return ref.sequence_logprob(logits, targets, mask) / mask.sum(-1)


@mutant("align.sequence_logprob", "test_sequence_logprob_sums_token_logprobs_over_the_mask",
        "test_masked_positions_change_nothing", why="sums every position, the padding's too")
def sequence_logprob_ignoring_the_mask(logits, targets, mask):
    return ref.token_logprobs(logits, targets.clamp(min=0)).sum(-1)


@mutant("align.masked_mean", "test_masked_mean_averages_only_the_entries_in_the_mask", why="zeros the masked entries, then averages over all of them")
def masked_mean_over_everything(values, mask):
    return torch.where(mask.bool(), _wide(values), 0.0).mean()


# ----------------------------------------------------------------------------------------------- reward model


class RewardModelAtPositionMinus1(ref.RewardModel):
    """Reads the reward at the last position of the batch, padding or not."""

    def forward(self, input_ids, lengths=None):
        return self.score(self.model(input_ids)[:, -1]).squeeze(-1)


mutant("align.RewardModel", "test_padding_after_the_last_token_changes_no_reward",
       "test_reward_is_the_score_of_the_hidden_state_at_the_last_real_token",
       why="reward read at position −1, ignoring the padding")(RewardModelAtPositionMinus1)


class RewardModelAtTheFirstPad(ref.RewardModel):
    """Reads the reward at position `length` (the first padding token; the last real one when there is none)."""

    def forward(self, input_ids, lengths=None):
        batch, length = input_ids.shape
        lengths = torch.full((batch,), length) if lengths is None else torch.as_tensor(lengths)
        at = lengths.clamp(max=length - 1)
        return self.score(self.model(input_ids)[torch.arange(batch), at]).squeeze(-1)


mutant("align.RewardModel", "test_reward_is_the_score_of_the_hidden_state_at_the_last_real_token",
       "test_padding_after_the_last_token_changes_no_reward",
       why="off by one: reads at position length, not length − 1")(RewardModelAtTheFirstPad)


class RewardModelMeanPooling(ref.RewardModel):
    """The mean of the scores of every real token."""

    def forward(self, input_ids, lengths=None):
        batch, length = input_ids.shape
        lengths = torch.full((batch,), length) if lengths is None else torch.as_tensor(lengths)
        real = torch.arange(length)[None, :] < lengths[:, None]
        scores = self.score(self.model(input_ids)).squeeze(-1)
        return torch.where(real, scores, 0.0).sum(-1) / lengths


mutant("align.RewardModel", "test_reward_is_the_score_of_the_hidden_state_at_the_last_real_token",
       why="averages the scores of all real tokens")(RewardModelMeanPooling)


class RewardModelUnchecked(ref.RewardModel):
    """Reads at lengths − 1 without checking the lengths: a length 0 reads position −1."""

    def forward(self, input_ids, lengths=None):
        batch, length = input_ids.shape
        lengths = torch.full((batch,), length) if lengths is None else torch.as_tensor(lengths)
        return self.score(self.model(input_ids)[torch.arange(batch), lengths - 1]).squeeze(-1)


mutant("align.RewardModel", "test_reward_model_rejects_a_length_outside_1_to_t",
       why="no check of the lengths or of the context")(_named("RewardModelUnchecked", RewardModelUnchecked))


# ------------------------------------------------------------------------------------------- Bradley–Terry


@mutant("align.bradley_terry_loss", "test_bradley_terry_loss_is_stable_at_margins_of_1e4",
        why="log(sigmoid(m)): −inf once σ underflows")
def bradley_terry_logging_the_sigmoid(chosen, rejected):
    return -torch.log(torch.sigmoid(_wide(chosen) - _wide(rejected))).mean()


@mutant("align.bradley_terry_loss", "test_bradley_terry_loss_equals_minus_log_sigmoid_of_the_margin",
        "test_bradley_terry_loss_decreases_as_the_margin_grows", "test_swapping_chosen_and_rejected_mirrors_the_loss",
        why="the margin the wrong way round: rejected − chosen")
def bradley_terry_backwards(chosen, rejected):
    return -F.logsigmoid(_wide(rejected) - _wide(chosen)).mean()


@mutant("align.bradley_terry_loss", "test_bradley_terry_loss_is_log_2_at_equal_rewards",
        "test_bradley_terry_loss_equals_minus_log_sigmoid_of_the_margin", why="sums over pairs instead of averaging")
def bradley_terry_summing(chosen, rejected):
    return -F.logsigmoid(_wide(chosen) - _wide(rejected)).sum()


@mutant("align.bradley_terry_loss", "test_bradley_terry_loss_equals_minus_log_sigmoid_of_the_margin",
        why="bfloat16 rewards computed in bfloat16")
def bradley_terry_in_bfloat16(chosen, rejected):
    return -F.logsigmoid(chosen - rejected).mean()


@mutant("align.bradley_terry_loss", "test_bradley_terry_loss_is_stable_at_margins_of_1e4",
        why="a margin clamped to ±20 to avoid overflow")
def bradley_terry_clamping_the_margin(chosen, rejected):
    return -F.logsigmoid((_wide(chosen) - _wide(rejected)).clamp(-20, 20)).mean()


@mutant("align.preference_accuracy", "test_preference_accuracy_counts_pairs_ranked_right",
        why="a tie counts as ranked right")
def preference_accuracy_counting_ties(chosen, rejected):
    return (chosen >= rejected).float().mean()


@mutant("align.preference_pairs", "test_preference_pairs_reject_identical_answers_and_missing_fields",
        why="no check: identical answers pass, a missing field is a KeyError")
def preference_pairs_unchecked(records):
    return [(record["prompt"], record["chosen"], record["rejected"]) for record in records]


@mutant("align.preference_pairs", "test_preference_pairs_keep_valid_records_in_order",
        why="(prompt, rejected, chosen): the answers swapped")
def preference_pairs_swapped(records):
    return [(prompt, rejected, chosen) for prompt, chosen, rejected in ref.preference_pairs(records)]


# ---------------------------------------------------------------------------------------------------- the KL


def _kl_with(k1=None, k2=None, k3=None):
    def kl_penalty(logp, ref_logp, estimator="k1"):
        d = _wide(logp) - _wide(ref_logp)
        chosen = {"k1": k1, "k2": k2, "k3": k3}.get(estimator)
        return chosen(d) if chosen is not None else ref.kl_penalty(logp, ref_logp, estimator)
    return kl_penalty


kl_k3_sign_flipped = _kl_with(k3=lambda d: torch.exp(d) - 1 - d)
kl_k3_sign_flipped.__name__ = "kl_k3_sign_flipped"
mutant("align.kl_penalty", "test_kl_estimators_match_their_definitions",
       "test_k1_and_k3_average_to_the_exact_kl_under_the_policy",
       why="k3 with the ratio upside down: exp(d) − 1 − d")(kl_k3_sign_flipped)

kl_k2_without_the_half = _kl_with(k2=lambda d: d**2)
kl_k2_without_the_half.__name__ = "kl_k2_without_the_half"
mutant("align.kl_penalty", "test_kl_estimators_match_their_definitions", why="k2 = d², the ½ forgotten")(
    kl_k2_without_the_half)

kl_k1_reversed = _kl_with(k1=lambda d: -d)
kl_k1_reversed.__name__ = "kl_k1_reversed"
mutant("align.kl_penalty", "test_kl_estimators_match_their_definitions",
       "test_k1_and_k3_average_to_the_exact_kl_under_the_policy", why="k1 = ref_logp − logp")(kl_k1_reversed)

kl_k1_absolute = _kl_with(k1=lambda d: d.abs())
kl_k1_absolute.__name__ = "kl_k1_absolute"
mutant("align.kl_penalty", "test_kl_estimators_match_their_definitions",
       "test_k1_and_k3_average_to_the_exact_kl_under_the_policy",
       why="k1 = |d|, to keep the penalty positive: biased")(kl_k1_absolute)

kl_k3_of_exp_without_minus_1 = _kl_with(k3=lambda d: torch.exp(-d) + d)
kl_k3_of_exp_without_minus_1.__name__ = "kl_k3_of_exp_without_minus_1"
mutant("align.kl_penalty", "test_kl_estimators_are_zero_when_the_policies_agree",
       why="k3 without the − 1: 1 where the policies agree")(kl_k3_of_exp_without_minus_1)

kl_k2_as_k1 = _kl_with(k2=lambda d: d / 2)
kl_k2_as_k1.__name__ = "kl_k2_as_k1"
mutant("align.kl_penalty", "test_k2_and_k3_are_never_negative", why="k2 = d/2, the square forgotten")(kl_k2_as_k1)


@mutant("align.kl_penalty", "test_kl_penalty_rejects_an_unknown_estimator",
        why="an unknown estimator falls back to k1")
def kl_falling_back_to_k1(logp, ref_logp, estimator="k1"):
    return ref.kl_penalty(logp, ref_logp, estimator if estimator in ("k1", "k2", "k3") else "k1")


# ------------------------------------------------------------------------------------------------------- GAE


def _gae_loop(rewards, values, mask, gamma, lam, reset=True, backwards=True, swap=False):
    mask = mask.bool()
    rewards, values = _wide(rewards), _wide(values)
    if reset:
        rewards, values = torch.where(mask, rewards, 0.0), torch.where(mask, values, 0.0)
    if swap:
        gamma, lam = lam, gamma
    length = rewards.shape[-1]
    next_value = next_advantage = torch.zeros_like(values[..., 0])
    advantages = [None] * length
    for t in (reversed(range(length)) if backwards else range(length)):
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        advantage = delta + gamma * lam * next_advantage
        if reset:
            advantage = torch.where(mask[..., t], advantage, 0.0)
        advantages[t] = advantage
        next_value, next_advantage = values[..., t], advantage
    advantages = torch.stack(advantages, -1)
    advantages = torch.where(mask, advantages, 0.0)
    return advantages, torch.where(mask, advantages + values, 0.0)


@mutant("align.gae", "test_gae_equals_the_discounted_sum_of_td_residuals", "test_masked_positions_change_nothing",
        why="no reset at the mask: bootstraps from the values and advantages of padding")
def gae_without_mask_reset(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_loop(rewards, values, mask, gamma, lam, reset=False)


@mutant("align.gae", "test_gae_equals_the_discounted_sum_of_td_residuals",
        "test_gae_with_lambda_1_gives_discounted_returns_minus_values", why="runs forwards over time")
def gae_forwards(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_loop(rewards, values, mask, gamma, lam, backwards=False)


@mutant("align.gae", "test_gae_equals_the_discounted_sum_of_td_residuals",
        "test_gae_with_lambda_1_gives_discounted_returns_minus_values", why="γ and λ swapped")
def gae_swapping_gamma_and_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_loop(rewards, values, mask, gamma, lam, swap=True)


@mutant("align.gae", "test_gae_equals_the_discounted_sum_of_td_residuals",
        "test_gae_with_lambda_1_gives_discounted_returns_minus_values", why="returns = advantages, values forgotten")
def gae_returns_without_values(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, _ = ref.gae(rewards, values, mask, gamma, lam)
    return advantages, advantages


@mutant("align.gae", "test_gae_equals_the_discounted_sum_of_td_residuals", why="bfloat16 computed in bfloat16")
def gae_in_bfloat16(rewards, values, mask, gamma=1.0, lam=0.95):
    advantages, returns = ref.gae(rewards, values, mask, gamma, lam)
    return advantages.to(rewards.dtype), returns.to(rewards.dtype)


# ------------------------------------------------------------------------------------------------------- PPO


def _surrogate(logp, old_logp, advantages, clip):
    ratio = torch.exp(_wide(logp) - _wide(old_logp))
    advantages = _wide(advantages)
    return ratio, ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages


@mutant("align.ppo_policy_loss", "test_ppo_policy_loss_equals_the_clipped_surrogate",
        "test_clipped_tokens_get_exactly_zero_policy_gradient", why="max instead of min: optimistic")
def ppo_taking_the_max(logp, old_logp, advantages, mask, clip=0.2):
    ratio, unclipped, clipped = _surrogate(logp, old_logp, advantages, clip)
    return -_mean(torch.maximum(unclipped, clipped), mask), _mean((clipped < unclipped).double(), mask)


@mutant("align.ppo_policy_loss", "test_ppo_policy_loss_equals_the_clipped_surrogate",
        why="clips the advantage instead of the ratio")
def ppo_clipping_the_advantage(logp, old_logp, advantages, mask, clip=0.2):
    ratio, unclipped, clipped = _surrogate(logp, old_logp, advantages, clip)
    other = ratio * _wide(advantages).clamp(1 - clip, 1 + clip)
    return -_mean(torch.minimum(unclipped, other), mask), _mean((clipped < unclipped).double(), mask)


@mutant("align.ppo_policy_loss", "test_clipped_tokens_get_exactly_zero_policy_gradient",
        "test_ppo_policy_loss_equals_the_clipped_surrogate", why="clip(ρ)·A alone: no min with the unclipped term")
def ppo_clipped_term_only(logp, old_logp, advantages, mask, clip=0.2):
    ratio, unclipped, clipped = _surrogate(logp, old_logp, advantages, clip)
    return -_mean(clipped, mask), _mean((clipped < unclipped).double(), mask)


@mutant("align.ppo_policy_loss", "test_clip_fraction_is_the_share_of_tokens_the_clip_stops",
        "test_ppo_policy_loss_equals_the_clipped_surrogate", why="clip_fraction counts every ratio outside the band")
def ppo_counting_every_ratio_outside_the_band(logp, old_logp, advantages, mask, clip=0.2):
    ratio, unclipped, clipped = _surrogate(logp, old_logp, advantages, clip)
    return -_mean(torch.minimum(unclipped, clipped), mask), _mean(((ratio - 1).abs() > clip).double(), mask)


@mutant("align.ppo_policy_loss", "test_ppo_policy_loss_at_ratio_1_is_minus_the_mean_advantage",
        "test_ppo_policy_loss_equals_the_clipped_surrogate", why="ρ = π_old / π, upside down")
def ppo_ratio_upside_down(logp, old_logp, advantages, mask, clip=0.2):
    return ref.ppo_policy_loss(old_logp, logp, advantages, mask, clip)


@mutant("align.ppo_policy_loss", "test_ppo_policy_loss_at_ratio_1_is_minus_the_mean_advantage",
        why="sums over tokens instead of averaging")
def ppo_summing(logp, old_logp, advantages, mask, clip=0.2):
    loss, fraction = ref.ppo_policy_loss(logp, old_logp, advantages, mask, clip)
    return loss * mask.bool().sum(), fraction


@mutant("align.ppo_policy_loss", "test_masked_positions_change_nothing",
        "test_ppo_policy_loss_equals_the_clipped_surrogate", why="averages over every token, padding included")
def ppo_over_every_token(logp, old_logp, advantages, mask, clip=0.2):
    ratio, unclipped, clipped = _surrogate(logp, old_logp, advantages, clip)
    return -torch.minimum(unclipped, clipped).mean(), _mean((clipped < unclipped).double(), mask)


def _values(values, old_values, returns, clip):
    values, old_values, returns = _wide(values), _wide(old_values), _wide(returns)
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return (values - returns) ** 2, (clipped - returns) ** 2


@mutant("align.ppo_value_loss", "test_value_clip_stops_the_gradient_beyond_the_band",
        "test_ppo_value_loss_equals_the_clipped_definition", why="no value clip: ½ (V − R)²")
def value_loss_unclipped(values, old_values, returns, mask, clip=0.2):
    unclipped, _ = _values(values, old_values, returns, clip)
    return 0.5 * _mean(unclipped, mask)


@mutant("align.ppo_value_loss", "test_value_clip_stops_the_gradient_beyond_the_band",
        "test_ppo_value_loss_equals_the_clipped_definition", why="min of the two errors instead of max")
def value_loss_taking_the_min(values, old_values, returns, mask, clip=0.2):
    return 0.5 * _mean(torch.minimum(*_values(values, old_values, returns, clip)), mask)


@mutant("align.ppo_value_loss", "test_ppo_value_loss_equals_the_clipped_definition", why="without the ½")
def value_loss_without_the_half(values, old_values, returns, mask, clip=0.2):
    return _mean(torch.maximum(*_values(values, old_values, returns, clip)), mask)


@mutant("align.ppo_value_loss", "test_ppo_value_loss_equals_the_clipped_definition",
        "test_value_clip_stops_the_gradient_beyond_the_band", why="clips V itself to [−ε, ε], not its change")
def value_loss_clipping_the_value(values, old_values, returns, mask, clip=0.2):
    values, returns = _wide(values), _wide(returns)
    clipped = values.clamp(-clip, clip)
    return 0.5 * _mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@mutant("align.entropy", "test_masked_positions_change_nothing", "test_entropy_is_the_masked_mean_of_minus_sum_p_log_p",
        why="entropy not masked: the mean over every position")
def entropy_not_masked(logits, mask):
    return ref.entropy(logits, torch.ones_like(mask, dtype=torch.bool))


@mutant("align.entropy", "test_entropy_is_finite_at_logits_of_1e4", why="p · log p with log p = log(softmax)")
def entropy_logging_the_softmax(logits, mask):
    p = torch.softmax(_wide(logits), -1)
    return _mean(-(p * p.log()).sum(-1), mask)


@mutant("align.entropy", "test_entropy_of_equal_logits_is_log_v", "test_entropy_is_the_masked_mean_of_minus_sum_p_log_p",
        why="log base 2")
def entropy_in_bits(logits, mask):
    return ref.entropy(logits, mask) / torch.log(torch.tensor(2.0))


@mutant("align.ppo_rewards", "test_ppo_rewards_are_the_kl_penalty_plus_the_score_on_the_last_response_token",
        why="the score on position −1, padding or not")
def ppo_rewards_scoring_the_last_position(score, logp, ref_logp, mask, kl_coef=0.1, estimator="k1"):
    mask = mask.bool()
    rewards = torch.where(mask, -kl_coef * ref.kl_penalty(logp, ref_logp, estimator), 0.0)
    rewards[:, -1] += _wide(score)
    return rewards


@mutant("align.ppo_rewards", "test_ppo_rewards_are_the_kl_penalty_plus_the_score_on_the_last_response_token",
        why="adds the KL instead of subtracting it")
def ppo_rewards_paying_for_kl(score, logp, ref_logp, mask, kl_coef=0.1, estimator="k1"):
    return ref.ppo_rewards(score, logp, ref_logp, mask, -kl_coef, estimator)


@mutant("align.ppo_rewards", "test_ppo_rewards_are_the_kl_penalty_plus_the_score_on_the_last_response_token",
        why="ignores the estimator: always k1")
def ppo_rewards_always_k1(score, logp, ref_logp, mask, kl_coef=0.1, estimator="k1"):
    return ref.ppo_rewards(score, logp, ref_logp, mask, kl_coef)


@mutant("align.ppo_rewards", "test_ppo_rewards_reject_a_row_without_response_tokens",
        why="a row without response tokens silently loses its score")
def ppo_rewards_unchecked(score, logp, ref_logp, mask, kl_coef=0.1, estimator="k1"):
    mask = mask.bool()
    rewards = torch.where(mask, -kl_coef * ref.kl_penalty(logp, ref_logp, estimator), 0.0)
    positions = torch.arange(mask.shape[-1]).expand(mask.shape)
    last = torch.where(mask, positions, -1).amax(-1)
    return rewards + torch.where(positions == last[:, None], _wide(score)[:, None], 0.0)


# ------------------------------------------------------------------------------------------------------- DPO


def _dpo(chosen_log_ratio, rejected_log_ratio, beta):
    chosen, rejected = beta * chosen_log_ratio, beta * rejected_log_ratio
    return -F.logsigmoid(chosen - rejected).mean(), chosen, rejected


@mutant("align.dpo_loss", "test_dpo_loss_is_log_2_when_the_policy_is_the_reference",
        "test_dpo_loss_is_bradley_terry_on_the_implicit_rewards", why="no reference: β log π alone")
def dpo_without_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    return _dpo(_wide(policy_chosen), _wide(policy_rejected), beta)


@mutant("align.dpo_loss", "test_dpo_loss_is_log_2_when_the_policy_is_the_reference",
        "test_beta_scales_the_implicit_rewards", why="β multiplies the loss, not the log-ratios")
def dpo_beta_outside(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    chosen = _wide(policy_chosen) - _wide(ref_chosen)
    rejected = _wide(policy_rejected) - _wide(ref_rejected)
    return -beta * F.logsigmoid(chosen - rejected).mean(), beta * chosen, beta * rejected


@mutant("align.dpo_loss", "test_dpo_loss_decreases_as_the_chosen_margin_grows",
        "test_dpo_loss_is_bradley_terry_on_the_implicit_rewards", why="rejected − chosen: prefers the wrong answer")
def dpo_backwards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    return _dpo(_wide(policy_rejected) - _wide(ref_rejected), _wide(policy_chosen) - _wide(ref_chosen), beta)


@mutant("align.dpo_loss", "test_dpo_loss_is_bradley_terry_on_the_implicit_rewards",
        "test_beta_scales_the_implicit_rewards", why="returns the log-ratios as rewards, without β")
def dpo_rewards_without_beta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    loss, chosen, rejected = ref.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return loss, chosen / beta, rejected / beta


@mutant("align.dpo_loss", "test_dpo_loss_is_bradley_terry_on_the_implicit_rewards",
        why="bfloat16 computed in bfloat16")
def dpo_in_bfloat16(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    chosen, rejected = beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen, rejected


# ------------------------------------------------------------------------------------------------------ GRPO


@mutant("align.grpo_advantages", "test_equal_rewards_in_a_group_give_zero_advantages",
        why="divides by the std without eps: 0/0 for equal rewards")
def grpo_advantages_without_eps(rewards, group_size, eps=1e-6):
    groups = _wide(rewards).reshape(-1, group_size)
    return ((groups - groups.mean(-1, keepdim=True)) / groups.std(-1, keepdim=True)).reshape(rewards.shape)


@mutant("align.grpo_advantages", "test_grpo_advantages_have_zero_mean_and_unit_sample_std_in_each_group",
        "test_grpo_advantages_equal_the_definition", why="population std (n) where the sample std (n − 1) is meant")
def grpo_advantages_population_std(rewards, group_size, eps=1e-6):
    groups = _wide(rewards).reshape(-1, group_size)
    std = groups.std(-1, keepdim=True, unbiased=False)
    return ((groups - groups.mean(-1, keepdim=True)) / (std + eps)).reshape(rewards.shape)


@mutant("align.grpo_advantages", "test_grpo_advantages_have_zero_mean_and_unit_sample_std_in_each_group",
        "test_grpo_advantages_equal_the_definition", why="mean and std over the whole batch, not per group")
def grpo_advantages_over_the_batch(rewards, group_size, eps=1e-6):
    ref.grpo_advantages(rewards, group_size, eps)  # the same checks
    rewards = _wide(rewards)
    return (rewards - rewards.mean()) / (rewards.std() + eps)


@mutant("align.grpo_advantages", "test_grpo_advantages_equal_the_definition",
        why="groups taken as columns (strided) instead of consecutive responses")
def grpo_advantages_strided(rewards, group_size, eps=1e-6):
    columns = _wide(rewards).reshape(group_size, -1)
    return ((columns - columns.mean(0)) / (columns.std(0) + eps)).reshape(rewards.shape)


@mutant("align.grpo_advantages", "test_grpo_advantages_equal_the_definition",
        "test_grpo_advantages_have_zero_mean_and_unit_sample_std_in_each_group", why="eps added inside a sqrt")
def grpo_advantages_eps_in_the_variance(rewards, group_size, eps=1e-6):
    groups = _wide(rewards).reshape(-1, group_size)
    std = (groups.var(-1, keepdim=True) + eps).sqrt()
    return ((groups - groups.mean(-1, keepdim=True)) / std).reshape(rewards.shape)


@mutant("align.grpo_advantages", "test_grpo_advantages_reject_a_batch_that_is_not_whole_groups",
        why="no check of the group size")
def grpo_advantages_unchecked(rewards, group_size, eps=1e-6):
    groups = _wide(rewards).reshape(-1, group_size)
    return ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + eps)).reshape(rewards.shape)


@mutant("align.grpo_loss", "test_grpo_loss_equals_the_clipped_objective",
        "test_grpo_loss_at_ratio_1_is_about_0_but_its_gradient_is_not", why="ignores aggregation: always per token")
def grpo_loss_always_per_token(logp, old_logp, advantages, mask, clip=0.2, ref_logp=None, kl_coef=0.0,
                               aggregation="token"):
    return ref.grpo_loss(logp, old_logp, advantages, mask, clip, ref_logp, kl_coef, "token")


@mutant("align.grpo_loss", "test_grpo_loss_equals_the_clipped_objective", why="adds the KL penalty to the objective")
def grpo_loss_rewarding_kl(logp, old_logp, advantages, mask, clip=0.2, ref_logp=None, kl_coef=0.0,
                           aggregation="token"):
    return ref.grpo_loss(logp, old_logp, advantages, mask, clip, ref_logp, -kl_coef, aggregation)


@mutant("align.grpo_loss", "test_grpo_loss_equals_the_clipped_objective",
        "test_grpo_loss_at_ratio_1_is_about_0_but_its_gradient_is_not",
        why="the mean over every position of a response, padding included")
def grpo_loss_sequence_mean_over_all_positions(logp, old_logp, advantages, mask, clip=0.2, ref_logp=None,
                                               kl_coef=0.0, aggregation="token"):
    if aggregation == "token":
        return ref.grpo_loss(logp, old_logp, advantages, mask, clip, ref_logp, kl_coef, aggregation)
    advantages = _wide(advantages)
    advantages = advantages[:, None] if advantages.dim() == 1 else advantages
    _, unclipped, clipped = _surrogate(logp, old_logp, advantages.expand(mask.shape), clip)
    objective = torch.minimum(unclipped, clipped)
    if kl_coef:
        objective = objective - kl_coef * ref.kl_penalty(logp, ref_logp, "k3")
    return -torch.where(mask.bool(), objective, 0.0).mean(-1).mean(), _mean((clipped < unclipped).double(), mask)


@mutant("align.grpo_loss", "test_masked_positions_change_nothing", "test_grpo_loss_equals_the_clipped_objective",
        why="the sequence mean sums over the mask but divides by every position")
def grpo_loss_unmasked_objective(logp, old_logp, advantages, mask, clip=0.2, ref_logp=None, kl_coef=0.0,
                                 aggregation="token"):
    advantages = _wide(advantages)
    advantages = advantages[:, None] if advantages.dim() == 1 else advantages
    _, unclipped, clipped = _surrogate(logp, old_logp, advantages.expand(mask.shape), clip)
    objective = torch.minimum(unclipped, clipped)
    if kl_coef:
        objective = objective - kl_coef * ref.kl_penalty(logp, ref_logp, "k3")
    per_response = objective.mean(-1)  # padding's objective included
    return -per_response.mean(), _mean((clipped < unclipped).double(), mask)


@mutant("align.grpo_loss", "test_grpo_loss_rejects_a_kl_penalty_without_reference_and_unknown_aggregations",
        why="no KL without a reference, and any unknown aggregation taken as per sequence")
def grpo_loss_unchecked(logp, old_logp, advantages, mask, clip=0.2, ref_logp=None, kl_coef=0.0, aggregation="token"):
    return ref.grpo_loss(logp, old_logp, advantages, mask, clip, ref_logp, kl_coef if ref_logp is not None else 0.0,
                         "token" if aggregation == "token" else "sequence")
