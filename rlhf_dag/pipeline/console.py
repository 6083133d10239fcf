"""The console logger of every job: one short line per message a person wants to read.

Dagster's own console logger writes each message behind a 130-character prefix (date, logger, level, job, run id,
step); a 40-minute run's progress lines are hard to follow through it. This one writes `HH:MM:SS message`: the
steps' own lines (they name their asset: `sft_model: step 48/132, loss 0.41, 90 s left`), warnings and errors.
Dagster's bookkeeping events (step started, output handled, ...) appear only at DEBUG (`rlhf-dag run -v`). The run's
page in the web UI still holds every event with every field.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

import dagster as dg

# Where Dagster's log manager puts a record's fields (dagster._core.log_manager.LOG_RECORD_METADATA_ATTR)
METADATA = "dagster_meta"


class ShortLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, METADATA, None) or {}
        message = meta.get("orig_message") or record.getMessage()
        step = meta.get("step_key")
        if step and not message.startswith(step):
            message = f"{step}: {message}"
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname}: {message}"
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {message}"


class PeopleFilter(logging.Filter):
    """At INFO, the steps' own messages, and Dagster's events only where something failed."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if self.level <= logging.DEBUG or record.levelno >= logging.WARNING:
            return True
        return (getattr(record, METADATA, None) or {}).get("dagster_event") is None


@dg.logger(
    {"log_level": dg.Field(str, is_required=False, default_value="INFO", description="INFO, or DEBUG for every event")},
    description="One short line per message (HH:MM:SS message); Dagster's bookkeeping events only at DEBUG.",
)
def short_console_logger(init_context) -> logging.Logger:
    level = logging.getLevelName(init_context.logger_config["log_level"].upper())
    logger = logging.Logger("rlhf_dag.console", level=level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ShortLines())
    handler.addFilter(PeopleFilter(level))
    logger.addHandler(handler)
    return logger


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def run_progress(asset: str, selection: Iterable[str], done: set[str], last_seconds: dict[str, float]) -> str:
    """Where a run stands as `asset` starts: its place among the run's assets, and the time the rest took when each was
    last materialized (`last_seconds`; an asset never materialized has none), the estimate of what is left."""
    selection = sorted(selection)
    left = [a for a in selection if a not in done]
    known = [a for a in left if a in last_seconds]
    line = f"{asset}: asset {len(selection) - len(left) + 1} of {len(selection)} in this run"
    if known:
        line += f"; about {duration(sum(last_seconds[a] for a in known))} left by each asset's last time"
    unknown = [a for a in left if a not in last_seconds]
    if unknown:
        line += f" ({'no' if not known else 'and no'} earlier time of {', '.join(unknown)})"
    return line


def log_run_progress(context: dg.AssetExecutionContext, asset: str) -> None:
    """`run_progress` for the running asset, from the instance: the run's asset selection, what this run has already
    materialized, and the `seconds` each asset's latest materialization recorded (the publisher's metadata)."""
    selection = {key.to_user_string() for key in (context.dagster_run.asset_selection or {context.asset_key})}
    done, last_seconds = set(), {}
    for name in selection:
        event = context.instance.get_latest_materialization_event(dg.AssetKey.from_user_string(name))
        if event is None:
            continue
        if event.run_id == context.run_id:
            done.add(name)
        elif "seconds" in event.asset_materialization.metadata:
            last_seconds[name] = event.asset_materialization.metadata["seconds"].value
    context.log.info(run_progress(asset, selection, done, last_seconds))
