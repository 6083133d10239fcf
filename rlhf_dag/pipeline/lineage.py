"""Which assets are fresh, stale or missing, and why: what `rlhf-dag status` and `retrain` read.

Built on the instance's public record of each event: a materialization stores
its code version and the data version of every input it read
(`dagster/code_version`, `dagster/input_data_version/<key>` tags), a label
observation stores the file's sha256 as its data version. An asset is stale
when its definition's code version or an input's current data version differs
from what its latest materialization recorded; and since a stale or missing
asset will change when rebuilt, everything downstream of it is stale too (the
set `retrain` must rebuild, in one run).

Dagster's own stale status (the UI's "Unsynced") looks one edge up only; it
agrees with this one because every asset also depends on the labeled files
upstream of it and its code version covers the upstream assets' configs
(pipeline/assets.py, publish.profile_version).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
INPUT_VERSION_TAG = "dagster/input_data_version/"

FRESH, STALE, MISSING = "FRESH", "STALE", "MISSING"


# Assets `rlhf-dag run` and `retrain` build when missing; the others (the alternatives to PPO) only once asked for.
CORE_GROUPS = ("rlhf",)


@dataclass
class AssetStatus:
    key: str
    status: str  # FRESH, STALE or MISSING
    causes: list[str] = field(default_factory=list)
    optional: bool = False  # outside the core graph: never built by retrain while missing


def observe_labels(defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict | None = None) -> None:
    """Record every labeled file's current sha256 so staleness reflects edits on disk."""
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance, run_config=run_config)


def current_data_version(
    instance: dg.DagsterInstance, key: dg.AssetKey, is_source: bool, latest: dict | None = None
) -> str | None:
    """A source's latest observed data version, or an asset's latest materialized one (from `latest`, events already read)."""
    if is_source:
        records = instance.fetch_observations(key, limit=1).records
        return records[0].asset_observation.tags.get(DATA_VERSION_TAG) if records else None
    event = latest[key] if latest is not None and key in latest else instance.get_latest_materialization_event(key)
    return event.asset_materialization.tags.get(DATA_VERSION_TAG) if event else None


def asset_statuses(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[AssetStatus]:
    """Every materializable asset in topological order, with the reasons it is stale spelled out."""
    return graph_statuses(defs.resolve_asset_graph(), instance)


def graph_statuses(graph, instance: dg.DagsterInstance) -> list[AssetStatus]:
    """`asset_statuses` for an asset graph (what the automation sensor has, instead of the Definitions)."""
    out, changing, latest = [], set(), {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        # a labeling batch (a partition of labeling_candidates) is made once, on purpose: never stale, never rebuilt
        if not node.is_materializable or node.is_partitioned:
            continue
        event = latest[key] = instance.get_latest_materialization_event(key)
        optional = node.group_name not in CORE_GROUPS
        if event is None:
            changing.add(key)
            out.append(
                AssetStatus(
                    key.to_user_string(),
                    MISSING,
                    ["never materialized" + (" (optional: rlhf-dag run --select '*')" if optional else "")],
                    optional,
                )
            )
            continue
        tags = event.asset_materialization.tags or {}
        causes = []
        if tags.get(CODE_VERSION_TAG) != node.code_version:
            causes.append(
                f"code version changed ({tags.get(CODE_VERSION_TAG)} -> {node.code_version}): its config or an upstream asset's changed"
            )
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            name = parent.to_user_string()
            if parent in changing:
                causes.append(f"upstream {name} is stale or missing")
                continue
            recorded = tags.get(INPUT_VERSION_TAG + name)
            current = current_data_version(instance, parent, not graph.get(parent).is_materializable, latest)
            if recorded != current:
                causes.append(f"{name} changed ({(recorded or '?')[:12]} -> {(current or '?')[:12]})")
        if causes:
            changing.add(key)
        out.append(AssetStatus(key.to_user_string(), STALE if causes else FRESH, causes, optional))
    return out


def to_refresh(statuses: list[AssetStatus]) -> list[str]:
    """Stale assets, and missing ones of the core graph (an optional asset is built the first time when asked for)."""
    return [s.key for s in statuses if s.status == STALE or (s.status == MISSING and not s.optional)]


def retrain(defs: dg.Definitions, instance: dg.DagsterInstance, dry_run: bool = False, run_config: dict | None = None):
    """Observe the label files, then materialize only stale and missing assets; returns (plan, result or None)."""
    observe_labels(defs, instance, run_config)
    plan = to_refresh(asset_statuses(defs, instance))
    if dry_run or not plan:
        return plan, None
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey.from_user_string(k) for k in plan],
        raise_on_error=False,
        run_config=run_config,
    )
    return plan, result
