"""Which assets are fresh, stale or missing, and why: what `rlhf-dag status` and `retrain` read.

Dagster computes staleness from data versions (a label file's sha256, each
asset's code version = its profile config hash, and the upstream versions a
materialization recorded). It has no public function for it outside the UI,
so this module wraps its resolver in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

INPUT_VERSION_TAG = "dagster/input_data_version/"


@dataclass
class AssetStatus:
    key: str
    status: str  # FRESH, STALE or MISSING
    causes: list[str] = field(default_factory=list)


def observe_labels(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Record every labeled file's current sha256 so staleness reflects edits on disk."""
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)


def _recorded_input_versions(instance, key: dg.AssetKey) -> dict[str, str]:
    event = instance.get_latest_materialization_event(key)
    if event is None:
        return {}
    tags = event.asset_materialization.tags or {}
    return {k[len(INPUT_VERSION_TAG) :]: v for k, v in tags.items() if k.startswith(INPUT_VERSION_TAG)}


def asset_statuses(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[AssetStatus]:
    """Every materializable asset in topological order, with Dagster's stale causes spelled out.

    Dagster marks stale only the direct children of a changed version; an asset
    whose upstream is stale or missing will change too, so it is reported stale
    here with that upstream as the cause (what `retrain` must rebuild).
    """
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None), instance=instance, asset_graph=graph)
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    out, changing = [], set()
    for key in graph.toposorted_asset_keys:
        if not graph.get(key).is_materializable:
            continue
        status = resolver.get_status(key)
        causes = []
        if status == StaleStatus.FRESH:
            upstream = sorted(p.to_user_string() for p in graph.get(key).parent_keys if p in changing)
            if upstream:
                status = StaleStatus.STALE
                causes = [f"upstream {name} is stale or missing" for name in upstream]
        elif status == StaleStatus.STALE:
            recorded = _recorded_input_versions(instance, key)
            for cause in resolver.get_stale_causes(key):
                text = f"{cause.asset_key.to_user_string()}: {cause.reason}"
                if cause.dependency_asset_key is not None:
                    dep = cause.dependency_asset_key
                    old = recorded.get(dep.to_user_string(), "?")
                    new = resolver.get_current_data_version(dep)
                    text += f" ({dep.to_user_string()} {old[:12]} -> {(new.value if new else '?')[:12]})"
                causes.append(text)
        if status != StaleStatus.FRESH:
            changing.add(key)
        out.append(AssetStatus(key.to_user_string(), status.value, causes))
    return out


def to_refresh(statuses: list[AssetStatus]) -> list[str]:
    return [s.key for s in statuses if s.status in (StaleStatus.STALE.value, StaleStatus.MISSING.value)]


def retrain(defs: dg.Definitions, instance: dg.DagsterInstance, dry_run: bool = False):
    """Observe the label files, then materialize only stale and missing assets; returns (plan, result or None)."""
    observe_labels(defs, instance)
    plan = to_refresh(asset_statuses(defs, instance))
    if dry_run or not plan:
        return plan, None
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey.from_user_string(k) for k in plan], raise_on_error=False)
    return plan, result
