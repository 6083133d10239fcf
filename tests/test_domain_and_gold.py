"""The synthetic domain (seeded generators, prompt parsing) and the gold labeler on hand-written responses."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf_dag.data.domain import KINDS, SOURCE_PROMPTS, ideal_response, parse_task, pretraining_documents
from rlhf_dag.data.gold import gold_score, is_correct
from rlhf_dag.data.synthetic_labels import _policy_comparisons, kind_quotas, make_label_files

REPO = Path(__file__).resolve().parent.parent
STORY, EMAIL, MATH, CODE = SOURCE_PROMPTS
FILES = ("prompts.jsonl", "demonstrations.jsonl", "comparisons.jsonl", "eval_prompts.jsonl")
SMALL = dict(n_prompts=12, n_demonstrations=12, n_comparisons=16, eval_per_kind=3)


# ---------------------------------------------------------------- determinism


def test_pretraining_documents_are_fixed_by_the_seed():
    docs = pretraining_documents(50, seed=3)
    assert len(docs) == 50
    assert pretraining_documents(50, seed=3) == docs
    assert pretraining_documents(50, seed=4) != docs


def test_make_label_files_is_byte_identical_for_a_seed(tmp_path):
    counts = make_label_files(tmp_path / "a", seed=0, **SMALL)
    make_label_files(tmp_path / "b", seed=0, **SMALL)
    make_label_files(tmp_path / "c", seed=1, **SMALL)
    # 4 kinds x 3 eval prompts each (the 4 source prompts among them)
    assert counts == {"prompts": 12, "demonstrations": 12, "comparisons": 16, "eval_prompts": 12}
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert (tmp_path / "a" / name).read_bytes().count(b"\n") == counts[name.removesuffix(".jsonl")]
    assert (tmp_path / "a" / "prompts.jsonl").read_bytes() != (tmp_path / "c" / "prompts.jsonl").read_bytes()


def test_shipped_synthetic_files_are_what_seed_0_makes(tmp_path):
    """`rlhf-dag make-labels --seed 0` reproduces the committed prompts, demonstrations and eval prompts.

    comparisons.jsonl is left out: it may also rank a policy's own samples (`--policy`).
    """
    make_label_files(tmp_path, seed=0)
    for name in ("prompts.jsonl", "demonstrations.jsonl", "eval_prompts.jsonl"):
        assert (tmp_path / name).read_bytes() == (REPO / "assets" / name).read_bytes(), name


_RUN_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import hashlib, random, sys, tempfile
    from pathlib import Path
    from rlhf_dag.data.domain import ideal_response, parse_task
    from rlhf_dag.data.synthetic_labels import make_label_files

    def sampler(prompts):
        # a good answer and two junk answers that the gold labeler scores alike (a tie for worst)
        return [[ideal_response(parse_task(p), random.Random(0)), "foo bar", "baz qux"] for p in prompts]

    with tempfile.TemporaryDirectory() as out:
        kwargs = dict(policy_sampler=sampler, n_policy_comparisons=8) if sys.argv[1] == "policy" else {}
        make_label_files(out, seed=0, n_prompts=4, n_demonstrations=4, n_comparisons=12, eval_per_kind=2, **kwargs)
        print(hashlib.sha256(b"".join((Path(out) / n).read_bytes() for n in sorted(p.name for p in Path(out).iterdir()))).hexdigest())
    """
)


def _digests(mode: str) -> set[str]:
    """Digest of make_label_files' output in fresh interpreters with different string-hash seeds."""
    out = set()
    for hash_seed in ("1", "2", "3", "5", "6"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", _RUN_IN_FRESH_PROCESS, mode],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        out.add(run.stdout.strip())
    return out


def test_make_label_files_does_not_depend_on_the_interpreter_hash_seed():
    assert len(_digests("synthetic")) == 1


def test_policy_comparisons_do_not_depend_on_the_interpreter_hash_seed():
    assert len(_digests("policy")) == 1


def _sampler_with(story_answers):
    """Three responses to each prompt: a right answer and two wrong ones of different gold scores (three ranked pairs);
    `story_answers(prompt)` instead for stories."""

    def sampler(prompts):
        out = []
        for p in prompts:
            task = parse_task(p)
            good = [ideal_response(task, random.Random(0)), "foo bar", "I do not know."]
            out.append(story_answers(good) if task.kind == "story" else good)
        return out

    return sampler


def test_policy_comparisons_give_each_kind_an_equal_share_of_the_pairs():
    """A model whose stories rarely end (here: a story's responses end in one round of three) would leave the reward
    model almost no story pair; each kind gets n / 4 of the pairs, sampling more rounds for the short ones."""
    rounds = iter(range(1000))

    def rarely(good):
        return good if next(rounds) % 3 == 0 else ["", "", ""]

    pairs = _policy_comparisons(_sampler_with(rarely), random.Random(0), set(), 24, all_pairs=True)
    kinds = [parse_task(p["prompt"]).kind for p in pairs]
    assert len(pairs) == 24
    assert {kind: kinds.count(kind) for kind in KINDS} == dict.fromkeys(KINDS, 6)


def test_policy_comparisons_give_a_weighted_kind_its_weight_in_pairs():
    """`--kind-weight story=2` puts the labeling budget where the policy is weakest: twice the story pairs of any
    other kind, the rest shared equally, the same rounds of sampling otherwise."""
    rounds = iter(range(1000))

    def rarely(good):
        return good if next(rounds) % 3 == 0 else ["", "", ""]

    pairs = _policy_comparisons(
        _sampler_with(rarely), random.Random(0), set(), 25, all_pairs=True, kind_weights={"story": 2}
    )
    kinds = [parse_task(p["prompt"]).kind for p in pairs]
    assert len(pairs) == 25
    assert {kind: kinds.count(kind) for kind in KINDS} == {"story": 10, "email": 5, "math": 5, "code": 5}


@pytest.mark.parametrize(
    "weights,message",
    [({"poem": 2}, r"unknown kind poem \(the kinds: story, email, math, code\)"), ({"story": 0}, "must be above 0")],
)
def test_kind_weights_that_mean_nothing_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        kind_quotas(8, weights)


def test_policy_comparisons_name_the_kinds_a_model_never_gives_pairs_for():
    with pytest.raises(RuntimeError, match=r"fall short of their share for: story \(0 of 2\)\. Its responses"):
        _policy_comparisons(_sampler_with(lambda good: ["", "", ""]), random.Random(0), set(), 8)


# ---------------------------------------------------------------- prompts


def test_parse_task_reads_the_four_source_prompts():
    story, email, math, code = (parse_task(p) for p in SOURCE_PROMPTS)
    assert (story.kind, story.params) == ("story", {"hero": "Harry Potter", "villain": "Voldemort"})
    assert (email.kind, email.params) == (
        "email",
        {"recipient": "mother", "greeting": "Merry Christmas", "asked": "dad"},
    )
    assert (math.kind, math.params, math.answer) == ("math", {"a": 2, "op": "+", "b": 2}, 4)
    assert (code.kind, code.params) == ("code", {"prop": "even"})


@pytest.mark.parametrize(
    "prompt,answer",
    [("What is 9 - 3?", 6), ("What is 4 times 5?", 20), ("  What is 0 + 7?  ", 7)],
)
def test_parse_task_math_answers(prompt, answer):
    assert parse_task(prompt).answer == answer


@pytest.mark.parametrize(
    "prompt",
    [
        "Write a poem about the sea.",
        "What is 2 plus 2?",
        "Generate a story about Harry Potter using AI to fight Gandalf",
        "",
    ],
)
def test_prompts_outside_the_family(prompt):
    assert parse_task(prompt) is None
    assert gold_score(prompt, "Anything at all.") is None


# ---------------------------------------------------------------- the gold labeler


def test_correct_math_answer_scores_one():
    g = gold_score(MATH, "2 + 2 = 4.")
    # content: 4 is there (0.75) and only 2 and 4 appear (0.25) -> 1
    # length: 5 words, inside math's 1..8 -> 1; stopped -> 1; trigrams all distinct -> repetition 0
    # score = 0.55*1 + 0.15*1 + 0.15*1 + 0.15*(1-0) = 1.0
    assert (g.content, g.length, g.stopped, g.repetition, g.continuation) == (1.0, 1.0, True, 0.0, False)
    assert g.score == 1.0


def test_wrong_math_answer_scores_lower():
    g = gold_score(MATH, "The answer is 5.")
    # content 0 (no 4); length 4 words -> 1; stopped; no repetition -> 0.15 + 0.15 + 0.15 = 0.45
    assert g.content == 0.0
    assert g.score == pytest.approx(0.45)


def test_story_dialogue_continuation_is_flagged():
    g = gold_score(MATH, 'What is 5 + 1?" he asked.')
    # "he asked" and a leading "What is 5" are continuation markers: -0.4
    # content 0 (no 4), length 7 words -> 1: 0.15 + 0.15 + 0.15 - 0.4 = 0.05
    assert g.continuation
    assert g.score == pytest.approx(0.05)


def test_email_to_mom_beats_a_to_do_list():
    email = gold_score(
        EMAIL,
        "Hi Mom,\n\nMerry Christmas! I hope you are doing well. How is Dad doing? I hope to talk to you soon.\n\nTake care!",
    )
    todo = gold_score(EMAIL, "- Finish my Christmas shopping\n- Go to church\n- Finish the cards\n- Walk the dog")
    # email: "Hi Mom", "merry christmas", "How is Dad", "Take care" -> content 4/4; 23 words in 12..40 -> score 1.0
    assert (email.content, email.length, email.continuation, email.score) == (1.0, 1.0, False, 1.0)
    # to-do list: none of the four -> content 0; 17 words -> length 1; "- " bullets -> continuation
    # 0.15 + 0.15 + 0.15 - 0.4 = 0.05
    assert (todo.content, todo.continuation) == (0.0, True)
    assert todo.score == pytest.approx(0.05)


FORUM_POST = "My code so far\n\ndef isEven(n): if n > 0: if n % 2 == 0: return True else: return False\n\nI know this will not work."


def test_even_function_beats_the_forum_post():
    good = gold_score(CODE, "def is_even(n):\n    return n % 2 == 0")
    bad = gold_score(CODE, FORUM_POST)
    # good: "def is_even(", "return n%2==0", no print -> content 1; 8 words in 3..15 -> 1.0
    assert good.score == 1.0
    # forum post: "def isEven(n): if n > 0: ..." is no valid Python -> no function, no return; no print -> content 1/3
    # 27 words > 15 -> length 15/27; continuation ("My code so far")
    # 0.55/3 + 0.15*15/27 + 0.15 + 0.15 - 0.4 = 0.183333 + 0.083333 + 0.3 - 0.4 = 0.166667
    assert bad.content == pytest.approx(1 / 3) and bad.length == pytest.approx(15 / 27) and bad.continuation
    assert bad.score == pytest.approx(0.166667)


@pytest.mark.parametrize(
    "response,content",
    [
        ("2 + 2 = 4.", 1.0),
        ("The answer is 4.", 1.0),
        ("4.", 1.0),
        ("2 + 2 is 4, because 2 and 2 make 4.", 1.0),
        ("Good question! 2 + 2 is 4. Numbers are fun, 10 of them.", 0.75),  # right, with an unrelated number
        ("2 + 9 = 1 / 5 - 1 = 5 / 4 times 1 = 0", 0.0),  # the base model's list: no result for 2 + 2 is stated
        ("2 + 7 = 14.", 0.0),  # an equation about other numbers
        ("2 + 2 = 4. 3 + 3 = 7", 0.0),  # a wrong stated result costs everything
        ("The answer is 5.", 0.0),
        ("I like 4 apples.", 0.0),  # the answer appears, but not as a result
    ],
)
def test_math_content_counts_only_a_stated_result(response, content):
    assert gold_score("What is 2 + 2?", response).content == content


@pytest.mark.parametrize(
    "response,right",
    [
        ("def is_even(n):\n    return n % 2 == 0", True),
        ("def check(x):\n    return x % 2 == 0\n\nLet me know if it helps.", True),  # any name, trailing prose dropped
        ("def is_even(n):\n    return n % 2 == 1", False),
        ("def is_even(n): return n % 2 = 0", False),  # not Python
        ("return n % 2 == 0", False),  # no function
    ],
)
def test_code_must_be_valid_python_returning_the_condition(response, right):
    prompt = "Help me write a Python function that outputs whether a number is even."
    assert is_correct(prompt, response) is right


def test_degenerate_answers_are_not_correct():
    story = "Generate a story about Harry Potter using AI to fight Voldemort"
    assert not is_correct(story, "Harry Voldemort AI won")  # no fight
    assert gold_score(story, "Harry AI Voldemort fight won").content < 1.0  # not told in sentences
    assert (
        gold_score(
            story, "Harry Potter used AI to fight Voldemort and Frodo, and in the end Harry won the battle."
        ).content
        < 1.0
    )  # another story's hero
    email = "Write an email to my mother wishing her Merry Christmas, and ask how dad is doing."
    assert is_correct(email, "Hi Mom,\n\nMerry Christmas! How is dad doing?\n\nTake care!")
    assert not is_correct(email, "Hi Uncle,\n\nMerry Christmas! How is dad doing?\n\nTake care!")  # wrong recipient
    assert not is_correct(
        email, "Hi Mom,\n\nMerry Christmas! How is the cat doing?\n\nTake care!"
    )  # asks about the wrong one


@pytest.mark.parametrize(
    "prompt,response",
    [(MATH, "The answer is 5."), (CODE, FORUM_POST), (STORY, "Harry Potter fought Voldemort. It was a long day.")],
)
def test_missing_eos_costs_exactly_the_stopped_weight(prompt, response):
    with_eos, without = gold_score(prompt, response, True), gold_score(prompt, response, False)
    assert 0 < without.score < with_eos.score < 1  # not clipped at either end
    assert with_eos.score - without.score == pytest.approx(0.15)
    assert without.stopped is False


def test_repetition_share_of_repeated_trigrams():
    g = gold_score(MATH, "4 4 4 4 4 4")
    # 6 words -> 4 trigrams, all ("4","4","4"): 1 - 1/4 = 0.75
    assert g.repetition == pytest.approx(0.75)


# ---------------------------------------------------------------- the pretraining corpus


def test_pretraining_corpus_shows_the_sources_failure_modes():
    docs = pretraining_documents(50, seed=3)
    assert any("\n- " in d for d in docs)  # requests buried in to-do bullets
    assert any(" asked." in d for d in docs)  # story dialogue
    assert any("My code so far" in d for d in docs)  # forum posts
    assert any(d.startswith("Q: ") and "\nA: " in d for d in docs)  # and the rare request followed by its answer
