"""What Dagster costs: the graph's training functions called directly vs through Dagster, in-process and by the CLI.

    .venv/bin/python bench/overhead.py [--profile smoke,default]

Three ways to run the same work, each in a fresh process with its own isolated
home, per profile:

- direct: the asset bodies' calls with no Dagster and no MLflow: the same
  training functions, the same sampling for metadata, the same saves, models
  handed on through `save_pretrained` directories as the assets hand them on;
- materialize: `observe_labels`, then `dagster.materialize(...)` of every asset
  and check, in-process (what `rlhf-dag run` and the tests do);
- cli: `dagster asset materialize -m rlhf_dag.definitions --select '*'` (what CI runs).

The ratio orchestrated/direct is given after imports (the work) and for whole
processes (what a user waits for). The materialize run is instrumented to say
what the difference consists of: imports, label observation, event-log writes
(`DagsterInstance.handle_new_event`), MLflow calls (the import of mlflow
included), the IO manager (pickling handles), and the rest (run and step
orchestration).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import bench_parser, isolated_env, machine, machine_line, markdown_table, run_child, save_results, warn_if_busy, write_report

SAMPLE_TEMPERATURE = 0.7  # as rlhf_dag.pipeline.assets.SAMPLE_TEMPERATURE, which cannot be imported without dagster


class Timers:
    """Seconds and calls spent in wrapped functions, by label."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, attr: str, label: str) -> None:
        original = inspect.getattr_static(owner, attr)
        func = original.__func__ if isinstance(original, staticmethod) else original

        @functools.wraps(func)
        def timed(*args, **kwargs):
            with self.clock(label):
                return func(*args, **kwargs)

        setattr(owner, attr, staticmethod(timed) if isinstance(original, staticmethod) else timed)

    def wrap_context(self, owner, attr: str, label: str) -> None:
        """Time a context manager's enter and exit (the body in between is someone else's)."""
        original = getattr(owner, attr)
        timers = self

        class Timed:
            def __init__(self, manager):
                self.manager = manager

            def __enter__(self):
                with timers.clock(label):
                    return self.manager.__enter__()

            def __exit__(self, *exc):
                with timers.clock(label):
                    return self.manager.__exit__(*exc)

        setattr(owner, attr, functools.wraps(original)(lambda *args, **kwargs: Timed(original(*args, **kwargs))))

    @contextlib.contextmanager
    def clock(self, label: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] += time.perf_counter() - started
            self.calls[label] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def direct_worker(report: str, work: Path) -> None:
    started = time.perf_counter()
    import rlhf_dag.training.evaluate  # noqa: F401  (what the assets import, without dagster)
    import rlhf_dag.training.ppo  # noqa: F401
    import rlhf_dag.training.pretrain  # noqa: F401
    import rlhf_dag.training.reward  # noqa: F401
    import rlhf_dag.training.sft  # noqa: F401

    imports = time.perf_counter() - started
    run_started = time.perf_counter()
    steps = direct_graph(work)
    write_report(report, {"imports_seconds": imports, "run_seconds": time.perf_counter() - run_started, "steps": steps})


def direct_graph(work: Path) -> dict[str, float]:
    """The eight asset bodies of rlhf_dag/pipeline/assets.py minus Dagster and MLflow; seconds per asset.

    A copy by necessity: when an asset body gains work, this must gain it too, or the ratio flatters Dagster.
    """
    import pandas as pd
    from transformers import AutoTokenizer

    from rlhf_dag.config import labels_dir, resolve
    from rlhf_dag.data.corpus import load_corpus
    from rlhf_dag.data.datasets import build_dataset, splits, write_parquet
    from rlhf_dag.data.domain import SOURCE_PROMPTS
    from rlhf_dag.data.labels import load_labels
    from rlhf_dag.training.chat import format_prompt, raw_prompt
    from rlhf_dag.training.evaluate import evaluate_policies, mean_gold, reward_hacking_figure, sequence_kl, win_rate
    from rlhf_dag.training.generate import Sample, sample
    from rlhf_dag.training.models import load_causal_lm, load_reward_model
    from rlhf_dag.training.ppo import ppo_train
    from rlhf_dag.training.pretrain import pretrain
    from rlhf_dag.training.reward import train_reward_model
    from rlhf_dag.training.sft import supervised_finetune

    seconds: dict[str, float] = {}

    def source_samples(model, tokenizer, instruct: bool, seed: int):
        texts = [format_prompt(p) if instruct else raw_prompt(p) for p in SOURCE_PROMPTS]
        return sample(model, tokenizer, list(SOURCE_PROMPTS), texts, max_new_tokens=48, temperature=SAMPLE_TEMPERATURE, seed=seed)

    def save(model, tokenizer, name: str) -> str:
        model.save_pretrained(work / name, safe_serialization=True)
        tokenizer.save_pretrained(work / name)
        return str(work / name)

    def dataset(labels_name: str, asset: str) -> Path:
        cfg = resolve(asset)
        frame = build_dataset(load_labels(labels_dir() / f"{labels_name}.jsonl", labels_name), cfg.validation_fraction, cfg.split_salt)
        write_parquet(frame, work / f"{asset}.parquet")
        return work / f"{asset}.parquet"

    t = time.perf_counter()
    cfg = resolve("pretraining_corpus")
    write_parquet(pd.DataFrame({"text": load_corpus(cfg.source, cfg.n_documents, cfg.seed)}), work / "corpus.parquet")
    seconds["pretraining_corpus"], t = time.perf_counter() - t, time.perf_counter()

    cfg = resolve("base_model")
    result = pretrain(list(pd.read_parquet(work / "corpus.parquet")["text"]), cfg)
    source_samples(result.model, result.tokenizer, instruct=False, seed=cfg.seed)
    base_path = save(result.model, result.tokenizer, "base_model")
    seconds["base_model"], t = time.perf_counter() - t, time.perf_counter()

    sft_data = dataset("demonstrations", "sft_dataset")
    seconds["sft_dataset"], t = time.perf_counter() - t, time.perf_counter()

    cfg = resolve("sft_model")
    train, validation = splits(sft_data)
    base, tokenizer = load_causal_lm(base_path)
    result = supervised_finetune(base, tokenizer, train, validation, cfg)
    prompts = list(validation["prompt"][:64])
    mean_gold(sample(base, tokenizer, prompts, [raw_prompt(p) for p in prompts], 48, SAMPLE_TEMPERATURE, seed=cfg.seed))
    mean_gold(sample(result.model, tokenizer, prompts, [format_prompt(p) for p in prompts], 48, SAMPLE_TEMPERATURE, seed=cfg.seed))
    source_samples(result.model, tokenizer, instruct=True, seed=cfg.seed)
    sft_path = save(result.model, tokenizer, "sft_model")
    seconds["sft_model"], t = time.perf_counter() - t, time.perf_counter()

    comparisons = dataset("comparisons", "comparison_dataset")
    seconds["comparison_dataset"], t = time.perf_counter() - t, time.perf_counter()

    cfg = resolve("reward_model")
    train, validation = splits(comparisons)
    result = train_reward_model(sft_path, AutoTokenizer.from_pretrained(sft_path), train, validation, cfg)
    rm_path = save(result.model, result.tokenizer, "reward_model")
    seconds["reward_model"], t = time.perf_counter() - t, time.perf_counter()

    cfg = resolve("ppo_policy")
    prompts = [r["prompt"] for r in load_labels(labels_dir() / "prompts.jsonl", "prompts").records]
    policy, tokenizer = load_causal_lm(sft_path)
    reference, _ = load_causal_lm(sft_path)
    scorer, _ = load_reward_model(rm_path)
    critic, _ = load_reward_model(rm_path)
    ppo = ppo_train(policy, reference, scorer, critic, tokenizer, prompts, cfg,
                    monitor=lambda p, r, e: mean_gold([Sample(*x, 0) for x in zip(p, r, e)]))
    source_samples(ppo.policy, tokenizer, instruct=True, seed=cfg.seed)
    ppo_path = save(ppo.policy, tokenizer, "ppo_policy")
    ppo.value_model.save_pretrained(work / "ppo_policy" / "value_model", safe_serialization=True)
    (work / "ppo_policy" / "ppo_history.json").write_text(json.dumps(ppo.history))
    seconds["ppo_policy"], t = time.perf_counter() - t, time.perf_counter()

    cfg = resolve("policy_evaluation")
    prompts = [r["prompt"] for r in load_labels(labels_dir() / "eval_prompts.jsonl", "eval_prompts").records]
    base, tokenizer = load_causal_lm(base_path)
    sft, _ = load_causal_lm(sft_path)
    policy, _ = load_causal_lm(ppo_path)
    scorer, _ = load_reward_model(rm_path)
    results = evaluate_policies({"base": (base, False), "sft": (sft, True), "ppo": (policy, True)}, tokenizer, scorer, prompts, cfg)
    metrics = {f"win_rate_{a}_vs_{b}": win_rate(results[a]["gold"], results[b]["gold"]) for a, b in (("ppo", "sft"), ("sft", "base"), ("ppo", "base"))}
    metrics["ppo_kl_to_sft"] = sequence_kl(policy, sft, tokenizer, results["ppo"]["samples"])
    reward_hacking_figure(ppo.history).savefig(work / "rm_vs_gold.png", dpi=100)
    (work / "metrics.json").write_text(json.dumps(metrics))
    seconds["policy_evaluation"] = time.perf_counter() - t
    return seconds


def materialize_worker(report: str) -> None:
    started = time.perf_counter()
    import dagster as dg

    dagster_import = time.perf_counter() - started
    from dagster._core.storage.upath_io_manager import UPathIOManager

    from rlhf_dag.definitions import defs

    imports = time.perf_counter() - started
    import rlhf_dag.pipeline.assets as assets

    timers = Timers()
    timers.wrap(dg.DagsterInstance, "handle_new_event", "event log")
    timers.wrap(UPathIOManager, "handle_output", "IO manager")
    timers.wrap(UPathIOManager, "load_input", "IO manager")
    # the resource's run context: the mlflow import (first time), experiment lookup, params, end of run
    timers.wrap_context(type(defs.resources["mlflow"]), "start_run", "MLflow")
    for name in ("log_metrics", "log_curves", "log_text", "log_json", "log_figure"):
        timers.wrap(type(defs.resources["mlflow"]), name, "MLflow")
    for name in ("pretrain", "supervised_finetune", "train_reward_model", "ppo_train", "evaluate_policies"):
        timers.wrap(assets, name, "training functions")

    instance = dg.DagsterInstance.get()
    t = time.perf_counter()
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance)
    observe = time.perf_counter() - t
    timers.reset()
    t = time.perf_counter()
    result = dg.materialize([*defs.assets, *defs.asset_checks], instance=instance, resources=defs.resources)
    run = time.perf_counter() - t
    steps = {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.get_step_success_events()}
    write_report(report, {
        "success": result.success, "imports_seconds": imports, "dagster_import_seconds": dagster_import, "observe_seconds": observe,
        "run_seconds": run, "steps": steps, "components": dict(timers.seconds), "calls": dict(timers.calls),
        "events": len(instance.get_records_for_run(result.run_id, limit=100000).records),
    })


def cli_stats_worker(report: str) -> None:
    """The CLI's run as its instance recorded it: run start to end, so that the rest of its process time is start-up."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    stats = instance.get_run_stats(run.run_id)
    write_report(report, {"run_seconds": stats.end_time - stats.start_time, "status": str(run.status), "steps_succeeded": stats.steps_succeeded})


def measure(profile: str) -> dict:
    out: dict = {}
    for mode in ("direct", "materialize", "cli"):
        root, env = isolated_env(f"overhead-{mode}", profile)
        report = root / "report.json"
        if mode == "cli":
            dagster = str(Path(sys.executable).parent / "dagster")
            child = run_child([dagster, "asset", "materialize", "-m", "rlhf_dag.definitions", "--select", "*"], env, root / "run.log")
            stats = run_child([sys.executable, __file__, "--worker", "cli-stats", "--report", str(report)], env, root / "stats.log", report)
            out[mode] = {"process_wall_seconds": child.wall_seconds, "peak_rss_mb": child.peak_rss_mb, **stats.report}
        else:
            cmd = [sys.executable, __file__, "--worker", mode, "--report", str(report), "--work", str(root / "direct")]
            child = run_child(cmd, env, root / "run.log", report)
            out[mode] = {"process_wall_seconds": child.wall_seconds, "peak_rss_mb": child.peak_rss_mb, **child.report}
        print(f"  {profile} {mode}: {child.wall_seconds:.1f}s", flush=True)
    direct, mat, cli = out["direct"], out["materialize"], out["cli"]
    work_direct = direct["run_seconds"]
    work_orchestrated = mat["observe_seconds"] + mat["run_seconds"]
    parts = {
        "imports (dagster + definitions over the training modules)": mat["imports_seconds"] - direct["imports_seconds"],
        "label observation (observe_labels job)": mat["observe_seconds"],
        f"event log ({mat['calls'].get('event log', 0)} events written)": mat["components"].get("event log", 0.0),
        "MLflow (import, runs, params, metrics, artifacts)": mat["components"].get("MLflow", 0.0),
        "IO manager (pickle handles)": mat["components"].get("IO manager", 0.0),
    }
    measured = sum(parts.values()) - parts["imports (dagster + definitions over the training modules)"]
    parts["rest (run and step orchestration, checks, asset-body extras; difference of two runs)"] = work_orchestrated - work_direct - measured
    out["summary"] = {
        "direct_seconds": work_direct,
        "materialize_seconds": work_orchestrated,
        "ratio_materialize_over_direct": work_orchestrated / work_direct,
        "ratio_materialize_process_over_direct_process": mat["process_wall_seconds"] / direct["process_wall_seconds"],
        "ratio_cli_process_over_direct_process": cli["process_wall_seconds"] / direct["process_wall_seconds"],
        "training_functions_inside_dagster_seconds": mat["components"].get("training functions", 0.0),
        "overhead_parts_seconds": parts,
    }
    return out


def main() -> int:
    parser = bench_parser(__doc__, default_profile="smoke,default")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.work or ".").mkdir(parents=True, exist_ok=True)
        {"direct": lambda: direct_worker(args.report, Path(args.work)), "materialize": lambda: materialize_worker(args.report),
         "cli-stats": lambda: cli_stats_worker(args.report)}[args.worker]()
        return 0

    profiles = list(dict.fromkeys(args.profile.split(",")))  # `make bench` asks for smoke,$(BENCH_PROFILE)
    info = machine()
    warn_if_busy(info)
    print(f"bench/overhead.py: profiles {', '.join(profiles)}; direct, in-process materialize and CLI, one process each", flush=True)
    results = {p: measure(p) for p in profiles}
    rows, parts_rows = [], []
    for p, r in results.items():
        s = r["summary"]
        rows.append([p, "direct (training functions)", r["direct"]["imports_seconds"], s["direct_seconds"], r["direct"]["process_wall_seconds"], r["direct"]["peak_rss_mb"], 1.0, 1.0])
        rows.append([p, "dg.materialize in-process", r["materialize"]["imports_seconds"], s["materialize_seconds"], r["materialize"]["process_wall_seconds"], r["materialize"]["peak_rss_mb"],
                     s["ratio_materialize_over_direct"], s["ratio_materialize_process_over_direct_process"]])
        rows.append([p, "dagster asset materialize (CLI)", None, r["cli"]["run_seconds"], r["cli"]["process_wall_seconds"], r["cli"]["peak_rss_mb"], None, s["ratio_cli_process_over_direct_process"]])
        parts_rows += [[p, part, seconds, seconds / s["direct_seconds"]] for part, seconds in s["overhead_parts_seconds"].items()]
    lines = [
        "### bench/overhead.py — Dagster orchestration vs calling the training functions directly",
        "",
        markdown_table(["profile", "how", "imports s", "work s (after imports)", "process wall s", "peak RSS MB", "ratio (work)", "ratio (process)"], rows),
        "",
        "Target: ratio (work) ≤ 1.10 at `default`. The CLI's work is its run as the instance recorded it (run start to end).",
        "",
        "#### What the difference consists of (materialize run, instrumented)",
        "",
        markdown_table(["profile", "part", "seconds", "share of direct work"], parts_rows),
        "",
        f"Machine: {machine_line(info)}",
    ]
    stem_profile = "default" if "default" in profiles else profiles[0]
    save_results("overhead", stem_profile, {"profiles": profiles, "machine": info, "results": results}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
