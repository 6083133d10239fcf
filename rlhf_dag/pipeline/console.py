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
