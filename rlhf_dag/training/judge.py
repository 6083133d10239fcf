"""What judges a policy's responses beyond the reward model: a plug-in, named in config by dotted path.

Evaluation, the training monitors and the per-kind figures receive a `Judge`;
training/ never imports a particular one. The project's synthetic world brings
the gold labeler (`rlhf_dag.data.gold:GoldJudge`, the default), which stands in
for human labelers on its task family. A team with its own prompts and no
labeler sets `judge: none`; evaluation then reports what it can measure
without one (the reward model's preference, labelled as the proxy PPO
optimized; KL; length; EOS), and a judge that can judge none of a set of
prompts counts as none for them.
"""

from __future__ import annotations

from typing import Protocol


class Judge(Protocol):
    kinds: tuple[str, ...]  # the task kinds it reports figures by, in order
    source_prompts: tuple[
        str, ...
    ]  # prompts whose answers it can call right or wrong: pass rates and side-by-side samples

    def score(self, prompt: str, response: str, ended_with_eos: bool = True) -> float | None:
        """A response's quality in [0, 1]; None where it cannot judge the prompt."""

    def kind(self, prompt: str) -> str | None:
        """The prompt's task kind; None outside the kinds it knows."""

    def is_correct(self, prompt: str, response: str) -> bool | None:
        """Whether the response does what the prompt asks; None where it cannot tell."""


NO_JUDGE = "none"


def load_judge(path: str) -> Judge | None:
    """The judge a config names: "module:Class" (instantiated without arguments), or "none"."""
    if path == NO_JUDGE:
        return None
    from .. import graph

    try:
        return graph.load(path)()
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"judge {path!r} cannot be loaded ({error}); name a class as 'module:Class', or 'none'"
        ) from error
