# Generated from reference/align.py by `llmkata exercises`. This copy is yours: replace each stub.
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

from torch import Tensor, nn

from .layers import Linear
from .model import Decoder, ModelConfig, Transformer

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "sequence")


# ------------------------------------------------------------------------------------------ log-probabilities


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] at every position: logits (..., V), targets (...) integer ids -> (...).

    The caller lines them up: for ids (B, T) and logits = model(ids), the targets of logits[:, :-1] are ids[:, 1:].
    Computed with `log_softmax` (never softmax(...).log(), which gives −inf where a probability underflows), in
    float32 at least. Logits whose shape is not targets' plus one dimension are a ValueError.
    Example: logits [[0., 0.]], targets [1] -> [−log 2]
    """
    raise NotImplementedError('`align.token_logprobs` is not implemented yet — chapter 12 (align): see '
                              'test_token_logprobs_equal_log_softmax_at_the_target and 2 more in spec/test_align.py.')


def sequence_logprob(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """log π(response) = Σ_t mask_t · log π(target_t): logits (B, T, V), targets (B, T), mask (B, T) -> (B,).

    Targets outside the mask are never looked up, so they may be anything (the -100 of padding, say).
    """
    raise NotImplementedError('`align.sequence_logprob` is not implemented yet — chapter 12 (align): see '
                              'test_sequence_logprob_sums_token_logprobs_over_the_mask and '
                              'test_masked_positions_change_nothing in spec/test_align.py.')


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of `values` where `mask` is True (or 1), a scalar; entries outside the mask are never read.

    Half precision is averaged in float32. An empty mask has nothing to average: NaN (0/0), as in torch.
    Example: masked_mean([1., 2., 9.], [True, True, False]) -> 1.5
    """
    raise NotImplementedError('`align.masked_mean` is not implemented yet — chapter 12 (align): see '
                              'test_masked_mean_averages_only_the_entries_in_the_mask and '
                              'test_masked_positions_change_nothing in spec/test_align.py.')


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
        raise NotImplementedError('`align.RewardModel.forward` is not implemented yet — chapter 12 (align): see '
                                  'test_reward_is_the_score_of_the_hidden_state_at_the_last_real_token and 2 more in '
                                  'spec/test_align.py.')


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """−mean log σ(chosen − rejected): the negative log-likelihood of the preferences under Bradley–Terry.

    chosen, rejected (N,) rewards of the preferred and the other answer of each pair -> a scalar.
    log σ(m) = −log(1 + e^(−m)) is computed in the form that never overflows, min(m, 0) − log(1 + e^(−|m|))
    (torch's logsigmoid): log(sigmoid(m)) is −inf once σ(m) underflows to 0 (m ≈ −104 in float32), and the
    loss of such a pair is |m|, not infinity. Half precision is computed in float32.
    Example: bradley_terry_loss([1.], [1.]) -> log 2 ≈ 0.6931
    """
    raise NotImplementedError('`align.bradley_terry_loss` is not implemented yet — chapter 12 (align): see '
                              'test_bradley_terry_loss_is_log_2_at_equal_rewards and 4 more in spec/test_align.py.')


def preference_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """The fraction of pairs whose chosen reward is strictly above the rejected one (a tie ranks nothing): a
    scalar in [0, 1].  Example: preference_accuracy([2., 1., 0.], [1., 1., 1.]) -> 1/3"""
    raise NotImplementedError('`align.preference_accuracy` is not implemented yet — chapter 12 (align): see '
                              'test_preference_accuracy_counts_pairs_ranked_right in spec/test_align.py.')


def preference_pairs(records: Iterable[Mapping]) -> list[tuple]:
    """Check preference records and return them as (prompt, chosen, rejected) tuples, in order.

    Each record is a mapping with "prompt", "chosen" and "rejected" (texts, or lists of token ids). A record
    without one of them, or whose two answers are identical (a pair that prefers nothing: it pulls both rewards
    the same way and teaches noise), is a ValueError naming the record's index and the problem.
    """
    raise NotImplementedError('`align.preference_pairs` is not implemented yet — chapter 12 (align): see '
                              'test_preference_pairs_keep_valid_records_in_order and 1 more in spec/test_align.py.')


# ---------------------------------------------------------------------------------------------------- the KL


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """A per-token estimate of KL(π ‖ π_ref) from the log-probabilities of tokens sampled from π, elementwise.

    With d = logp − ref_logp:  "k1": d;  "k2": d²/2;  "k3": exp(−d) − 1 + d.
    Averaged over samples from π, k1 and k3 equal the KL exactly; k2 does not, but it is never negative, and
    neither is k3 (e^x ≥ 1 + x). An unknown estimator is a ValueError naming the known ones.
    Example: kl_penalty(log 0.5, log 0.25, "k3") -> 0.5 − 1 + log 2 ≈ 0.1931
    """
    raise NotImplementedError('`align.kl_penalty` is not implemented yet — chapter 12 (align): see '
                              'test_kl_estimators_match_their_definitions, '
                              'test_kl_estimators_are_zero_when_the_policies_agree and 3 more in spec/test_align.py.')


# ------------------------------------------------------------------------------------------------------- PPO


def ppo_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, kl_coef: float = 0.1,
                estimator: str = "k1") -> Tensor:
    """Per-token rewards (B, T) for PPO: −kl_coef · kl_penalty(logp, ref_logp, estimator) on every response token,
    plus the reward model's score (B,) on the last token of each response; 0 outside the mask.

    Row b's rewards sum to score[b] − kl_coef · Σ_t KL_t. A row whose mask is empty has no last token: ValueError.
    """
    raise NotImplementedError('`align.ppo_rewards` is not implemented yet — chapter 12 (align): see '
                              'test_ppo_rewards_are_the_kl_penalty_plus_the_score_on_the_last_response_token and 2 '
                              'more in spec/test_align.py.')


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
    raise NotImplementedError('`align.gae` is not implemented yet — chapter 12 (align): see '
                              'test_gae_equals_the_discounted_sum_of_td_residuals and 2 more in spec/test_align.py.')


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                    clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate: −masked mean of min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t), ρ = exp(logp − old_logp).

    logp (B, T) of the policy being trained, old_logp and advantages (B, T) from when the data was sampled (they are
    data: detach them), mask (B, T) -> (loss, clip_fraction), two scalars. clip_fraction is the share of the
    masked tokens whose clipped term is the smaller one: those whose gradient the clip sets to exactly 0 (ρ past
    1 + ε with A > 0, or below 1 − ε with A < 0). At ρ = 1 the loss is −mean(A) and its gradient −A/N per token.
    """
    raise NotImplementedError('`align.ppo_policy_loss` is not implemented yet — chapter 12 (align): see '
                              'test_ppo_policy_loss_equals_the_clipped_surrogate and 4 more in spec/test_align.py.')


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """½ · masked mean of max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²), a scalar; all inputs (B, T).

    The max keeps the larger error: a value that has moved more than ε from V_old towards the return is charged as
    if it had stopped at V_old ± ε, a constant, so its gradient is 0 and one batch cannot drag it further.
    """
    raise NotImplementedError('`align.ppo_value_loss` is not implemented yet — chapter 12 (align): see '
                              'test_ppo_value_loss_equals_the_clipped_definition and 2 more in spec/test_align.py.')


def entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """The mean over masked tokens of H_t = −Σ_v p_v log p_v, p = softmax(logits_t): logits (B, T, V), mask (B, T)
    -> a scalar. log p from `log_softmax`, so a probability that underflows to 0 adds 0, not 0 · (−inf) = NaN."""
    raise NotImplementedError('`align.entropy` is not implemented yet — chapter 12 (align): see '
                              'test_entropy_is_the_masked_mean_of_minus_sum_p_log_p, '
                              'test_entropy_of_equal_logits_is_log_v and 2 more in spec/test_align.py.')


# ------------------------------------------------------------------------------------------------------- DPO


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference optimisation: Bradley–Terry on the implicit rewards β · (log π_θ − log π_ref).

    Inputs (N,): sequence log-probabilities (`sequence_logprob`) of the chosen and rejected responses under the
    policy and the frozen reference. Returns (loss, chosen_rewards, rejected_rewards): the scalar
    −mean log σ(r̂_c − r̂_r) and the implicit rewards r̂ (N,) each. When the policy is the reference every r̂ is 0
    and the loss is log 2; β is the strength of the implicit KL constraint (small β: the policy may move far).
    """
    raise NotImplementedError('`align.dpo_loss` is not implemented yet — chapter 12 (align): see '
                              'test_dpo_loss_is_log_2_when_the_policy_is_the_reference and 3 more in '
                              'spec/test_align.py.')


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
    raise NotImplementedError('`align.grpo_advantages` is not implemented yet — chapter 12 (align): see '
                              'test_grpo_advantages_have_zero_mean_and_unit_sample_std_in_each_group and 3 more in '
                              'spec/test_align.py.')


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
    raise NotImplementedError('`align.grpo_loss` is not implemented yet — chapter 12 (align): see '
                              'test_masked_positions_change_nothing, test_grpo_loss_equals_the_clipped_objective and '
                              '2 more in spec/test_align.py.')
