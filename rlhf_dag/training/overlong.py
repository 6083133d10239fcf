"""Records longer than the model's context: rejected naming their file and line, or cut on purpose.

Left alone, TRL decides silently: SFTTrainer cuts a sequence at max_length,
RewardTrainer drops the pair. `overlong` in SFTConfig / RewardConfig makes it a
choice, checked with the model's own tokenizer before training starts:

- "reject": a record (of either split) that does not fit fails the step,
  naming its file, line and id, its length and the limit.
- "truncate": the start of each overlong training response is kept and the
  records cut are counted. SFT keeps TRL's own cut (`keep_start`): the
  response's tail and its EOS fall outside the window, so the model is never
  taught to stop mid-answer. The RM cuts the response so that prompt + response
  + EOS fits: the score is read at that EOS, as it is at inference (a pair
  whose responses differ only past the cut becomes a tie and teaches nothing).
  Validation records are measured as they are.

A prompt so long that no response token fits fails under either choice.
"""

from __future__ import annotations

import logging

import pandas as pd

from ..config import Overlong
from ..data.chat import format_prompt

logger = logging.getLogger(__name__)


class OverlongRecordError(ValueError):
    """A record does not fit the model's context; the message names its file, line and id, and what to change."""


def sequence_tokens(tokenizer, prompts, responses) -> list[int]:
    """Tokens of each chat-formatted prompt + response + EOS: the sequence TRL's trainers build."""
    texts = [format_prompt(p, tokenizer) + r + tokenizer.eos_token for p, r in zip(prompts, responses)]
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


def count_overlong(
    tokenizer, frame: pd.DataFrame, responses: tuple[str, ...], max_length: int, overlong: Overlong, step: str
) -> int:
    """How many records exceed max_length; fail instead under 'reject', or when a prompt leaves no room for a response."""
    prompt_only = pd.Series(sequence_tokens(tokenizer, frame["prompt"], [""] * len(frame)), index=frame.index)
    if (prompt_only >= max_length).any():
        row = frame[prompt_only >= max_length].iloc[0]
        raise OverlongRecordError(
            f"{_where(row)}: record {row['id']!r}: the prompt alone is {prompt_only[row.name]} tokens with EOS, leaving "
            f"no room for a response within {step}'s max_length of {max_length}; shorten the prompt or raise max_length"
        )
    lengths = pd.DataFrame(
        {c: sequence_tokens(tokenizer, frame["prompt"], frame[c]) for c in responses}, index=frame.index
    )
    over = (lengths > max_length).any(axis=1)
    if over.any() and overlong == Overlong.reject:
        row = frame[over].iloc[0]
        column = lengths.loc[row.name].idxmax()
        more = f" ({over.sum() - 1} more records too)" if over.sum() > 1 else ""
        raise OverlongRecordError(
            f"{_where(row)}: record {row['id']!r}: prompt + {column} is {lengths.loc[row.name, column]} tokens, over "
            f"{step}'s max_length of {max_length}{more}; shorten it, or set {step}'s max_length to at least "
            f"{lengths.max().max()} or its overlong to 'truncate' (Dagster run config, or rlhf_dag/config.py)"
        )
    if over.any():
        logger.warning(
            "%s: %d of %d records are longer than max_length %d tokens; their training copies are cut (overlong: truncate)",
            step,
            over.sum(),
            len(frame),
            max_length,
        )
    return int(over.sum())


def _where(row: pd.Series) -> str:
    """`file:line` of a dataset row (datasets built before line numbers were kept have none)."""
    return row.get("source", "a dataset without line numbers (re-materialize it)")


def fit_responses(tokenizer, frame: pd.DataFrame, responses: tuple[str, ...], max_length: int) -> pd.DataFrame:
    """`frame` with each response cut to its longest start whose prompt + response + EOS fits max_length."""
    return frame.assign(
        **{c: [_cut(tokenizer, p, r, max_length) for p, r in zip(frame["prompt"], frame[c])] for c in responses}
    )


def _cut(tokenizer, prompt: str, response: str, max_length: int) -> str:
    prompt_text = format_prompt(prompt, tokenizer)
    offsets = tokenizer(prompt_text + response, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) < max_length:
        return response
    return response[: offsets[max_length - 2][1] - len(prompt_text)]  # max_length - 1 tokens, then the EOS
