"""PPO's two savings keep what is computed: sampling-pass log-probs ([PPO-12]) and minibatches packed without padding ([PPO-13])."""

from __future__ import annotations

import copy

import pytest
import torch
from toy import causal_lm, toy_tokenizer, value_model

from rlhf_dag.data.chat import format_prompt
from rlhf_dag.training.generate import generate_tokens, truncate_after_eos
from rlhf_dag.training.ppo import length_buckets, response_logprobs
from rlhf_dag.training.reward import per_token_scores

PROMPTS = ["a b", "c d e f", "g", "h a b c d e", "b", "c c c"]


@pytest.fixture(scope="session", params=["", "h a b c "], ids=["plain", "shared-prefix"])
def rollout(request):
    """Sampled rollouts of PROMPTS; with an opening every prompt shares, which the sampler prefills once. There the
    attention is sharpened (queries and keys x 30), so that a token's position shows in the log-probs (in the toy
    model as it is, a prompt's tokens shifted by 5 positions move no logit by more than 4e-5)."""
    torch.manual_seed(0)
    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    if request.param:
        with torch.no_grad():
            for layer in policy.model.layers:
                layer.self_attn.q_proj.weight.mul_(30)
                layer.self_attn.k_proj.weight.mul_(30)
    query, response, sampled = generate_tokens(
        policy, tokenizer, [format_prompt(request.param + p) for p in PROMPTS], 10, 0.7, return_logprobs=True
    )
    response, _ = truncate_after_eos(response, tokenizer.eos_token_id, tokenizer.pad_token_id)
    query_response = torch.cat([query, response], dim=1)
    return (
        policy,
        tokenizer,
        query.shape[1],
        query_response,
        query_response != tokenizer.pad_token_id,
        (response != tokenizer.pad_token_id).float(),
        sampled,
    )


def test_sampling_pass_log_probs_match_a_fresh_forward(rollout):
    """The log-prob of each sampled token as `generate` drew it (KV cache, logits / T) is what a full forward at T gives."""
    policy, _, n_query, query_response, attention, mask, sampled = rollout
    with torch.no_grad():
        recomputed, _ = response_logprobs(policy, query_response, attention, n_query, 0.7)
    assert mask.sum() > len(PROMPTS)  # real responses, not just EOS
    assert torch.allclose(sampled * mask, recomputed * mask, atol=1e-4)
    with torch.no_grad():
        at_one, _ = response_logprobs(policy, query_response, attention, n_query, 1.0)
    assert not torch.allclose(sampled * mask, at_one * mask, atol=1e-2)  # the comparison can fail: temperature matters


def test_length_buckets_cover_every_rollout_once_with_similar_lengths():
    torch.manual_seed(0)
    lengths = torch.tensor([5.0, 40, 6, 39, 7, 41, 8, 38])
    buckets = length_buckets(lengths, 2)
    assert sorted(torch.cat(buckets).tolist()) == list(range(8))
    assert all(float(lengths[b].max() - lengths[b].min()) <= 2 for b in buckets)
    orders = {tuple(tuple(b.tolist()) for b in length_buckets(lengths, 2)) for _ in range(10)}
    assert len(orders) > 1  # the minibatch order is shuffled each epoch


def packed(rollout, mb: torch.Tensor, share_prefix: bool = True):
    from rlhf_dag.training.ppo import pack_minibatch

    _, tokenizer, n_query, query_response, attention, mask, _ = rollout
    return pack_minibatch(
        query_response[mb, :n_query],
        attention[mb, :n_query],
        query_response[mb, n_query:],
        mask.sum(dim=1)[mb],
        tokenizer.pad_token_id,
        share_prefix,
    )


def test_a_packed_minibatch_scores_as_the_padded_rollout(rollout, request):
    """Queries without their left padding and responses without their right padding, rows left-padded to the
    minibatch's longest ([PPO-13]); the opening every query shares runs once before them ([PPO-20]): every response
    token's log-prob and value is what the padded rollout gives."""
    from rlhf_dag.training.ppo import packed_logprobs_and_values

    policy, tokenizer, n_query, query_response, attention, mask, _ = rollout
    critic = value_model()
    mb = torch.tensor([0, 2, 4, 5])
    packed_mb = packed(rollout, mb)
    shared = 0 if packed_mb.prefix is None else len(packed_mb.prefix)
    assert (shared > 4) == ("shared-prefix" in request.node.name)  # the opening "h a b c" and the template's
    assert packed_mb.input_ids.shape[1] + shared < n_query + mask.shape[1]  # padding really dropped
    assert (packed_mb.attention_mask.sum(dim=1) + shared == attention[mb].sum(dim=1)).all()  # and no real token lost
    with torch.no_grad():
        padded, _ = response_logprobs(policy, query_response[mb], attention[mb], n_query, 0.7)
        padded_values = per_token_scores(critic, query_response[mb], attention[mb])[:, n_query - 1 : -1]
        logprobs, _, values = packed_logprobs_and_values(policy, critic, packed_mb, 0.7)
    m = mask[mb, : packed_mb.width]
    assert m.sum() > len(mb)
    assert torch.allclose(padded[:, : packed_mb.width] * m, logprobs * m, atol=1e-5)
    assert torch.allclose(padded_values[:, : packed_mb.width] * m, values * m, atol=1e-5)


@pytest.mark.parametrize("rollout", ["h a b c "], indirect=True, ids=["shared-prefix"])
def test_a_shared_opening_run_once_trains_as_if_every_row_ran_it(rollout):
    """[PPO-20] With the queries' opening run once and its keys and values serving every row, the PPO loss's
    gradient for every weight of the policy and the critic is the one of the rows each running the whole query."""
    from rlhf_dag.training.ppo import packed_logprobs_and_values

    policy, critic = copy.deepcopy(rollout[0]).train(), value_model()
    mb = torch.tensor([0, 1, 3, 5])

    def gradients(share_prefix: bool) -> dict[str, torch.Tensor]:
        policy.zero_grad(), critic.zero_grad()
        minibatch = packed(rollout, mb, share_prefix)
        assert (minibatch.prefix is not None) == share_prefix
        logprobs, _, values = packed_logprobs_and_values(policy, critic, minibatch, 0.7)
        m = rollout[5][mb, : minibatch.width]
        ((logprobs * m).sum() + (values * m).pow(2).sum()).backward()
        return {
            n: p.grad.clone() for model in (policy, critic) for n, p in model.named_parameters() if p.grad is not None
        }

    shared, whole = gradients(True), gradients(False)
    assert shared.keys() == whole.keys() and len(whole) > 10
    for name in whole:
        assert torch.allclose(shared[name], whole[name], rtol=1e-4, atol=1e-6), name
    assert any(whole[n].abs().sum() > 0 for n in whole if "layers.0.self_attn.k_proj" in n)  # the opening's keys train


def test_pad_is_never_sampled_and_scoring_excludes_it_as_sampling_did():
    """A policy that likes PAD (a barely trained one does) must not write it inside a response: every mask,
    length and the RM's last token would read it as padding. Scoring then excludes PAD the same way, so the
    rollout's log-probs still equal a fresh forward's ([PPO-2])."""
    torch.manual_seed(0)
    policy, tokenizer = causal_lm(seed=5).eval(), toy_tokenizer()
    with torch.no_grad():
        policy.lm_head.bias[tokenizer.pad_token_id] = 3.0  # PAD the likeliest token in every context
    query, response, sampled = generate_tokens(
        policy, tokenizer, [format_prompt(p) for p in PROMPTS], 10, 1.0, return_logprobs=True
    )
    response, _ = truncate_after_eos(response, tokenizer.eos_token_id, tokenizer.pad_token_id)
    mask = response != tokenizer.pad_token_id
    assert mask.sum() > len(PROMPTS)
    assert (
        (mask.long().cumsum(dim=1) == torch.arange(1, mask.shape[1] + 1)).where(mask, True).all()
    )  # no PAD before a real token
    query_response = torch.cat([query, response], dim=1)
    with torch.no_grad():
        recomputed, _ = response_logprobs(
            policy,
            query_response,
            query_response != tokenizer.pad_token_id,
            query.shape[1],
            1.0,
            tokenizer.pad_token_id,
        )
    assert torch.allclose(sampled * mask, recomputed * mask, atol=1e-4)


def test_packed_scoring_gives_the_padded_rollouts_reference_log_probs_values_and_scores(rollout):
    """[PPO-15] the reference, the critic and the RM run over the rollouts packed in length order, a few per chunk:
    every reference log-prob and value, and each RM score at the last response token, is what the padded rollout gives."""
    from rlhf_dag.training.ppo import score_rollouts

    policy, tokenizer, n_query, query_response, attention, mask, _ = rollout
    reference, critic, scorer = causal_lm(seed=7).eval(), value_model(), value_model()
    with torch.no_grad():
        for p in scorer.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a reward model that is not the critic
        padded, _ = response_logprobs(reference, query_response, attention, n_query, 0.7, tokenizer.pad_token_id)
        padded_values = per_token_scores(critic, query_response, attention)[:, n_query - 1 : -1]
        last = n_query + mask.sum(dim=1).long() - 1
        padded_scores = per_token_scores(scorer, query_response, attention)[torch.arange(len(last)), last]
    lengths = mask.sum(dim=1)
    assert (
        len(set(lengths.tolist())) > 1 and len(set(attention[:, :n_query].sum(dim=1).tolist())) > 1
    )  # padding to drop on both sides
    ref_logprobs, values, scores = score_rollouts(
        policy,
        reference,
        scorer,
        critic,
        query_response[:, :n_query],
        attention[:, :n_query],
        query_response[:, n_query:],
        lengths,
        0.7,
        tokenizer.pad_token_id,
        chunk=4,
    )
    assert torch.allclose(ref_logprobs, padded * mask, atol=1e-5)
    assert torch.allclose(values, padded_values * mask, atol=1e-5)
    assert torch.allclose(scores, padded_scores, atol=1e-5)
    with torch.no_grad():
        critic_at_last = per_token_scores(critic, query_response, attention)[torch.arange(len(last)), last]
    assert not torch.allclose(
        scores, critic_at_last, atol=1e-3
    )  # the RM's score, not the critic's: the check above can fail


def test_the_sampler_draws_each_token_with_its_tempered_probability():
    """[PPO-17] Inverse-CDF sampling draws token k with probability softmax(logits / T)_k, PAD never: 4,000 draws
    of a response's first token against the model's own distribution at T = 0.7 (not the one at T = 1)."""
    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    with torch.no_grad():  # a distribution far from uniform, so that the temperature matters
        policy.lm_head.bias[4:] = torch.linspace(-2.0, 2.0, len(policy.lm_head.bias) - 4)
    text = format_prompt("a b")
    _, response = generate_tokens(policy, tokenizer, [text] * 4000, 1, 0.7, generator_seed=0)
    with torch.no_grad():
        logits = policy(**tokenizer([text], return_tensors="pt")).logits[0, -1]
    logits[tokenizer.pad_token_id] = float("-inf")
    observed = torch.bincount(response[:, 0], minlength=len(logits)).float() / len(response)
    assert observed[tokenizer.pad_token_id] == 0
    total_variation = lambda p: float((observed - p).abs().sum() / 2)  # noqa: E731
    assert total_variation(torch.softmax(logits / 0.7, dim=-1)) < 0.03
    assert total_variation(torch.softmax(logits, dim=-1)) > 0.06  # the check can fail: the temperature shows


def test_bf16_sampling_draws_close_to_the_fp32_distribution_and_leaves_the_model_fp32(monkeypatch):
    """`sample(precision="bf16")` draws from a bfloat16 copy: its first tokens (4,000 draws, T = 0.7) follow the fp32
    model's distribution within what bf16's rounding moves, and the model given keeps its fp32 weights."""
    from rlhf_dag.training import generate
    from rlhf_dag.training.generate import at_precision, sample

    drawn_with, decode = [], generate.decode

    def spy(model, *args, **kwargs):
        drawn_with.append(next(model.parameters()).dtype)
        return decode(model, *args, **kwargs)

    monkeypatch.setattr(generate, "decode", spy)

    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    with torch.no_grad():
        policy.lm_head.bias[4:] = torch.linspace(-2.0, 2.0, len(policy.lm_head.bias) - 4)
    before = {name: p.clone() for name, p in policy.state_dict().items()}
    text = format_prompt("a b")
    samples = sample(policy, tokenizer, [text] * 4000, [text] * 4000, 1, 0.7, precision="bf16")
    with torch.no_grad():
        logits = policy(**tokenizer([text], return_tensors="pt")).logits[0, -1]
    logits[tokenizer.pad_token_id] = float("-inf")
    vocab = tokenizer.get_vocab()
    first = torch.tensor([vocab.get(s.response, tokenizer.eos_token_id) for s in samples])  # one token or EOS
    observed = torch.bincount(first, minlength=len(logits)).float() / len(first)
    total_variation = lambda p: float((observed - p).abs().sum() / 2)  # noqa: E731
    assert total_variation(torch.softmax(logits / 0.7, dim=-1)) < 0.04
    assert total_variation(torch.softmax(logits, dim=-1)) > 0.06  # the check can fail: the temperature shows
    assert drawn_with == [torch.bfloat16]
    assert all(torch.equal(before[name], p) for name, p in policy.state_dict().items())
    assert next(policy.parameters()).dtype == torch.float32
    assert next(at_precision(policy, "bf16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="one of fp32, bf16, got 'fp16'"):
        at_precision(policy, "fp16")


@pytest.mark.parametrize("slots", [None, 37])
def test_the_decoding_loop_samples_what_generate_samples(slots):
    """The sampler (`decode`) against transformers' `generate(do_sample=True)` at equal settings (T = 0.7, PAD
    suppressed): the second token of a response, whose distribution goes through the KV cache and the first draw,
    is drawn by both with its exact marginal sum_t1 p(t1) p(t2 | t1), 4,000 draws each; with 37 slots the rows
    write 37 at a time, joining as others leave."""
    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    with torch.no_grad():
        policy.lm_head.bias[4:] = torch.linspace(-2.0, 2.0, len(policy.lm_head.bias) - 4)
    text, pad, eos = format_prompt("a b"), tokenizer.pad_token_id, tokenizer.eos_token_id
    prompt = tokenizer([text], return_tensors="pt")["input_ids"]
    prefixes = torch.cat(
        [prompt.repeat(len(policy.lm_head.bias), 1), torch.arange(len(policy.lm_head.bias))[:, None]], 1
    )

    @torch.no_grad()
    def marginal(temperature: float) -> torch.Tensor:
        """The exact distribution of the second token (a response that ended at the first has PAD there)."""
        first, second = policy(prompt).logits[0, -1], policy(prefixes).logits[:, -1]
        first[pad], second[:, pad] = float("-inf"), float("-inf")
        p1, p2 = torch.softmax(first / temperature, -1), torch.softmax(second / temperature, -1)
        p2[eos] = 0
        p2[eos, pad] = 1
        return (p1[:, None] * p2).sum(dim=0)

    exact = marginal(0.7)
    _, ours = generate_tokens(policy, tokenizer, [text] * 4000, 2, 0.7, generator_seed=0, slots=slots)
    torch.manual_seed(0)
    theirs = policy.generate(
        prompt.repeat(4000, 1),
        attention_mask=torch.ones(4000, prompt.shape[1], dtype=torch.long),
        do_sample=True,
        temperature=0.7,
        top_k=None,
        top_p=None,
        max_new_tokens=2,
        min_new_tokens=0,
        pad_token_id=pad,
        eos_token_id=eos,
        suppress_tokens=[pad],
    )[:, prompt.shape[1] :]
    total_variation = lambda sampled: float(  # noqa: E731
        (torch.bincount(sampled[:, 1], minlength=len(exact)).float() / len(sampled) - exact).abs().sum() / 2
    )
    assert total_variation(ours) < 0.04
    assert total_variation(theirs) < 0.04
    assert float((exact - marginal(1.0)).abs().sum() / 2) > 0.08  # the check can fail: T = 1 is another distribution


def test_greedy_decoding_of_a_left_padded_batch_is_generates():
    """Prompts of different lengths in one left-padded batch: the loop's positions and KV cache give, token for token,
    what `generate` gives with greedy decoding."""
    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    texts = [format_prompt(p) for p in PROMPTS]
    query, ours = generate_tokens(policy, tokenizer, texts, 8, 0.0)
    theirs = policy.generate(
        query,
        attention_mask=query != tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        suppress_tokens=[tokenizer.pad_token_id],
    )[:, query.shape[1] :]
    assert torch.equal(ours, theirs) and ours.shape[1] >= 2


@pytest.mark.parametrize("slots,opening", [(3, ""), (5, ""), (4, "h a b c ")], ids=["3", "5", "shared-prefix"])
def test_rows_that_join_and_leave_a_running_batch_decode_what_generate_decodes_alone(slots, opening):
    """Continuous batching (`decode` with fewer slots than prompts): rows stop at EOS and leave, the waiting prompts
    (of other lengths) join the running batch, left-padded to its width. With an opening every prompt shares, its KV
    cache is computed once and each row prefills only what follows; a prompt asked twice prefills once. Greedy, each
    row gives token for token what `generate` gives for its prompt alone, unpadded."""
    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    letters = "abcdefgh"
    texts = [format_prompt(opening + " ".join(letters[(i * j) % 8] for j in range(1 + i % 5))) for i in range(12)]
    texts += texts[:3]  # asked twice
    _, ours = generate_tokens(policy, tokenizer, texts, 8, 0.0, slots=slots)
    pad = tokenizer.pad_token_id
    for text, row in zip(texts, ours):
        prompt = tokenizer([text], return_tensors="pt")["input_ids"]
        alone = policy.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=8,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            suppress_tokens=[pad],
        )[0, prompt.shape[1] :]
        assert row[: len(alone)].tolist() == alone.tolist() and bool((row[len(alone) :] == pad).all())
    lengths = (ours != pad).sum(dim=1)
    assert lengths.min() < 8 and lengths.max() == 8  # the check can fail: rows left early while others wrote on


def test_a_step_that_samples_reports_its_generating_time_and_tokens_and_one_that_does_not_reports_none():
    """`result.step` adds what a step spent in the sampler: seconds, their share of the step, new tokens/s."""
    import time

    from rlhf_dag.training.result import GENERATION_FIGURES, StepResult, step

    policy, tokenizer = causal_lm(seed=3).eval(), toy_tokenizer()
    written = []

    @step
    def sampling(inputs, cfg):
        _, response = generate_tokens(policy, tokenizer, [format_prompt(p) for p in PROMPTS], 8, 1.0, 0)
        written.append(int((response != tokenizer.pad_token_id).sum()))
        time.sleep(0.2)  # the step's own work, outside the sampler
        return StepResult("sampling", {"loss": 1.0}, ["loss"])

    @step
    def training(inputs, cfg):
        return StepResult("training", {"loss": 1.0}, ["loss"])

    figures = sampling({}, None).metrics
    assert set(GENERATION_FIGURES) <= set(figures)
    seconds, share, rate = (figures[k] for k in GENERATION_FIGURES)
    assert seconds > 0 and 0 < share <= seconds / (seconds + 0.2)  # the sleep is the step's, not the sampler's
    assert rate == pytest.approx(written[0] / seconds)
    assert not set(GENERATION_FIGURES) & set(training({}, None).metrics)
