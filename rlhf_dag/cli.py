"""`rlhf-dag`: make the labeled files, run the graph, and see where everything went."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _use_persistent_instance() -> None:
    """DAGSTER_HOME defaults to RLHF_DAG_HOME/dagster, the instance `make ui` shows too."""
    from .config import home_dir

    # Dagster refuses a relative DAGSTER_HOME; a user's `DAGSTER_HOME=.rlhf_dag/dagster` means this folder
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home_dir() / "dagster").resolve()
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.is_file():  # Dagster's defaults, without its warning about a missing file or its telemetry banner
        config.write_text("telemetry:\n  enabled: false\n")


def _log_settings(verbose: bool) -> dict:
    """Run config for Dagster's console logger: INFO for people, DEBUG (every event) with -v."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}


def _figure(name: str, metadata: dict) -> str | None:
    """A headline figure as people read it: integers as integers, a win rate with its interval."""
    value = metadata[name].value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or name.endswith(("_ci_low", "_ci_high")):
        return None
    from .training.result import GENERATION_FIGURES

    if name == "seconds" or name in GENERATION_FIGURES:  # the table above the figures has them, step by step
        return None
    if f"{name}_ci_low" in metadata:
        return f"{name} {value:.3f} [{metadata[name + '_ci_low'].value:.3f}, {metadata[name + '_ci_high'].value:.3f}]"
    return f"{name} {value}" if isinstance(value, int) else f"{name} {value:.4g}"


def _sampler(model, tokenizer, args):
    """prompts -> `--samples-per-prompt` responses each from `model`; a response that did not end is "" (skipped)."""
    from .data.chat import format_prompt
    from .training.generate import sample

    def sampler(prompts: list[str]) -> list[list[str]]:
        repeated = [p for p in prompts for _ in range(args.samples_per_prompt)]
        samples = sample(
            model,
            tokenizer,
            repeated,
            [format_prompt(p, tokenizer) for p in repeated],
            args.max_new_tokens,
            1.0,
            batch_size=64,
            seed=args.seed,
        )
        # only responses that ended: the reward model always sees prompt + response + EOS
        texts = [s.response if s.ended_with_eos else "" for s in samples]
        return [texts[i : i + args.samples_per_prompt] for i in range(0, len(texts), args.samples_per_prompt)]

    return sampler


def _train_sft(profile: str, labels: Path, root: Path) -> tuple[str, dict]:
    """The SFT model `profile` trains on the demonstrations in `labels` (its base_model a pretrained checkpoint), as the
    graph would: its folder, and the facts for provenance.json."""
    from .config import PROFILES, resolve
    from .training.steps import run_chain

    os.environ["RLHF_DAG_PROFILE"] = profile
    pretrained = resolve("base_model").pretrained
    if not pretrained:
        raise SystemExit(f"make-labels --policy-sft {profile}: that profile pretrains its base model; give --policy")
    quiet = {"sample_max_new_tokens": 8}  # the steps' own report samples: not what is ranked here
    paths, results = run_chain(
        ["base_model", "sft_dataset", "sft_model"],
        labels,
        root,
        configs={"base_model": quiet, "sft_model": {**quiet, "gold_sample_prompts": 2}},
        paths={"pretraining_corpus": "unused: base_model imports a checkpoint"},
    )
    facts = {
        "policy": f"sft_model of the {profile} profile, trained on these demonstrations",
        "base": pretrained,
        # the settings it trained with (the profile's), and their hash: a change of either changes what is sampled
        "sft_settings": PROFILES[profile].get("sft_model", {}),
        "sft_training_hash": resolve("sft_model").training_hash(),
    }
    if "data_version" in results["base_model"].tags:
        facts["base_sha256"] = results["base_model"].tags["data_version"]
    return paths["sft_model"], facts


def cmd_make_labels(args) -> int:
    import logging
    import tempfile

    # sampling a real model takes minutes: its progress lines (rounds of ranked pairs, sampling calls) are shown
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from .data.synthetic_labels import make_label_files

    sizes = {
        "n_comparisons": args.comparisons,
        "n_policy_comparisons": args.policy_comparisons,
        "n_prompts": args.prompts,
        "n_demonstrations": args.demonstrations,
    }
    sizes = {k: v for k, v in sizes.items() if v is not None}
    kind_weights = _kind_weights(args.kind_weight)  # refused before minutes of training and sampling
    sampler, facts = None, {"policy": args.policy}
    with tempfile.TemporaryDirectory(prefix="rlhf_dag_labels_") as scratch:
        if args.policy or args.policy_sft:
            from .data.label_files import file_sha256
            from .training.models import load_causal_lm
            from .training.pretrain import gguf_file, load_pretrained

            if args.policy_sft:
                # InstructGPT's labelers ranked their SFT model's samples: write the demonstrations first (the same
                # seed writes them again, byte for byte, below), train the profile's SFT model on them, sample it.
                # They go to the scratch folder: the files in --out stay as they were until the new ones are complete
                make_label_files(Path(scratch) / "labels", seed=args.seed, **sizes)
                policy, facts = _train_sft(args.policy_sft, Path(scratch) / "labels", Path(scratch))
                model, tokenizer = load_causal_lm(policy)
            else:
                # a materialized model folder, or a checkpoint as base_model imports it (the smollm2 profile's GGUF)
                gguf = gguf_file(args.policy)
                model, tokenizer = load_pretrained(args.policy) if gguf else load_causal_lm(args.policy)
                facts |= {"policy_sha256": file_sha256(gguf)} if gguf else {}
            sampler = _sampler(model, tokenizer, args)
        counts = make_label_files(
            args.out,
            seed=args.seed,
            policy_sampler=sampler,
            all_policy_pairs=args.all_pairs,
            kind_weights=kind_weights,
            **sizes,
        )
    for name, n in counts.items():
        print(f"{Path(args.out) / (name + '.jsonl')}: {n} records")
    # what made these files, so that anyone can make them again byte for byte (on the same torch and CPU count)
    provenance = {"command": "rlhf-dag make-labels " + " ".join(argv_of(args)), "seed": args.seed, **facts}
    provenance["counts"] = counts
    (Path(args.out) / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return 0


def _kind_weights(words: list[str] | None) -> dict[str, float] | None:
    """`--kind-weight story=2` (repeatable) as {"story": 2.0}; a word that is not KIND=NUMBER is refused by name."""
    weights = {}
    for word in words or []:
        kind, _, value = word.partition("=")
        try:
            weights[kind.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"make-labels --kind-weight {word!r}: expected KIND=NUMBER, e.g. story=2") from None
    if weights:
        from .data.synthetic_labels import kind_quotas

        try:
            kind_quotas(1, weights)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    return weights or None


def argv_of(args) -> list[str]:
    """The make-labels options that made the files (sizes left at their defaults are left out)."""
    options = {
        "--seed": args.seed,
        "--out": args.out,
        "--policy": args.policy,
        "--policy-sft": args.policy_sft,
        "--samples-per-prompt": args.samples_per_prompt,
        "--max-new-tokens": args.max_new_tokens,
        "--prompts": args.prompts,
        "--demonstrations": args.demonstrations,
        "--comparisons": args.comparisons,
        "--policy-comparisons": args.policy_comparisons,
    }
    if not (args.policy or args.policy_sft):  # sampling options mean nothing without a policy
        del options["--samples-per-prompt"], options["--max-new-tokens"]
    words = [w for key, value in options.items() if value is not None for w in (key, str(value))]
    words += [w for weight in args.kind_weight or [] for w in ("--kind-weight", weight)]
    return words + (["--all-pairs"] if args.all_pairs else [])


def cmd_run(args) -> int:
    _use_persistent_instance()
    import dagster as dg

    from .config import active_profile, artifacts_dir, home_dir, labels_dir
    from .definitions import CORE, TRAINING_GRAPH, defs

    instance = dg.DagsterInstance.get()
    print(f"rlhf-dag: profile '{active_profile()}', labels from {labels_dir()}, writing to {home_dir()}")
    started = time.perf_counter()
    logs = _log_settings(args.verbose)
    defs.resolve_job_def("observe_labels").execute_in_process(instance=instance, run_config=logs)
    job = defs.resolve_implicit_global_asset_job_def()
    graph = dg.AssetSelection.from_string(args.select) & TRAINING_GRAPH if args.select else CORE
    selection = list(graph.resolve(defs.resolve_asset_graph()))
    result = job.execute_in_process(instance=instance, asset_selection=selection, raise_on_error=False, run_config=logs)
    total = time.perf_counter() - started
    materialized = _materialized(result)
    print(f"\n{'asset / check':<40} {'seconds':>8}  generating (share, new tokens/s)")
    for event in result.get_step_success_events():
        metadata = materialized.get(event.step_key, {})
        generating = (
            f"  {metadata['generate_seconds'].value:>6.1f} s ({metadata['generate_share'].value:.0%}, "
            f"{metadata['generate_tokens_per_s'].value:.0f})"
            if "generate_tokens_per_s" in metadata
            else ""
        )
        print(f"{event.step_key:<40} {event.event_specific_data.duration_ms / 1000:>8.1f}{generating}")
    print(f"{'total (wall, imports excluded)':<40} {total:>8.1f}")
    for key, metadata in materialized.items():
        figures = [f for f in (_figure(name, metadata) for name in metadata) if f]
        if figures:
            print(f"\n{key}: " + ", ".join(figures))
    print(f"\nmodels and datasets: {artifacts_dir()}/<asset>/<run id>/")
    from .config import mlflow_tracking_uri

    print(f"MLflow runs: {mlflow_tracking_uri()}  (browse with `make mlflow-ui`)")
    print(f"Dagster instance: {os.environ['DAGSTER_HOME']}  (browse with `make ui`)")
    if not result.success:
        print("\nrun FAILED: see the errors above", file=sys.stderr)
        return 1
    return 0


def cmd_status(args) -> int:
    _use_persistent_instance()
    import dagster as dg

    from .definitions import defs
    from .pipeline.lineage import asset_statuses, observe_labels

    instance = dg.DagsterInstance.get()
    observe_labels(defs, instance, _log_settings(args.verbose))
    print(f"{'asset':<22} {'status':<8} why")
    for s in asset_statuses(defs, instance):
        print(f"{s.key:<22} {s.status:<8} {'; '.join(s.causes)}")
    return 0


def cmd_retrain(args) -> int:
    """Observe the label files, then materialize only what is stale or missing."""
    _use_persistent_instance()
    import dagster as dg

    from .definitions import defs
    from .pipeline.lineage import retrain

    started = time.perf_counter()
    plan, result = retrain(defs, dg.DagsterInstance.get(), dry_run=args.dry_run, run_config=_log_settings(args.verbose))
    if not plan:
        print("rlhf-dag retrain: everything is fresh; nothing to do")
        return 0
    print(
        ("rlhf-dag retrain --dry-run: would materialize " if args.dry_run else "rlhf-dag retrain: materializing ")
        + ", ".join(plan)
    )
    if result is None:
        return 0
    print(f"materialized {', '.join(sorted(_materialized(result)))} in {time.perf_counter() - started:.1f}s")
    return 0 if result.success else 1


def cmd_label_batch(args) -> int:
    """Add a labeling batch (a partition of labeling_candidates, in the labeling code location) and materialize it: candidates
    sampled from the instance's latest sft_model (or ppo_policy), pushed to Label Studio."""
    _use_persistent_instance()
    import dagster as dg

    from .labeling_definitions import defs
    from .pipeline.labeling_loop import LABELING_BATCHES

    instance = dg.DagsterInstance.get()
    batch = args.name or time.strftime("batch-%Y%m%d-%H%M%S", time.gmtime())
    if instance.has_dynamic_partition(LABELING_BATCHES.name, batch):
        print(f"rlhf-dag label-batch: batch {batch!r} already exists; choose another --name", file=sys.stderr)
        return 1
    instance.add_dynamic_partitions(LABELING_BATCHES.name, [batch])
    config = {
        k: v
        for k, v in {"policy": args.policy, "prompts_per_batch": args.prompts, "responses_per_prompt": args.k}.items()
        if v is not None
    }
    run_config = {**_log_settings(args.verbose), "ops": {"labeling_candidates": {"config": config}}}
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("labeling_candidates")],
        partition_key=batch,
        run_config=run_config,
        raise_on_error=False,
    )
    if not result.success:
        instance.delete_dynamic_partition(LABELING_BATCHES.name, batch)  # nothing went out: the batch does not exist
        print(f"rlhf-dag label-batch: batch {batch!r} failed (see the errors above); nothing was kept", file=sys.stderr)
        return 1
    metadata = _materialized(result)["labeling_candidates"]
    print(f"batch {batch}: {metadata['tasks_pushed'].value} tasks pushed to {metadata['label_studio_project'].value}")
    return 0


def cmd_pull_labels(args) -> int:
    """Append the completed rankings of every labeling batch (and dropped-in exports) to comparisons.jsonl."""
    _use_persistent_instance()
    import dagster as dg

    from .config import labels_dir
    from .data.label_studio import LabelStudioError
    from .pipeline.labeling_loop import LABELING_BATCHES, pull_labels
    from .pipeline.resources import LabelStudio

    batches = args.batch or dg.DagsterInstance.get().get_dynamic_partitions(LABELING_BATCHES.name)
    try:
        report = pull_labels(LabelStudio(), batches)
    except (LabelStudioError, ValueError) as err:
        print(f"rlhf-dag pull-labels: {err}\nnothing was written", file=sys.stderr)
        return 1
    for line in report.lines(labels_dir() / "comparisons.jsonl"):
        print(line, file=sys.stderr if line.startswith("REJECTED") else sys.stdout)
    return 0


def _registry():
    import mlflow

    from .config import mlflow_tracking_uri
    from .pipeline.registry import PolicyRegistry

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    return mlflow.MlflowClient(), PolicyRegistry().model_name


def cmd_promote(args) -> int:
    """Point the champion alias at a registered version by hand, with the reason as a tag."""
    from .pipeline.registry import set_champion

    client, name = _registry()
    client.get_model_version(name, args.version)  # fails, naming the version, if it does not exist
    set_champion(client, name, args.version, f"promoted by hand: {args.reason}")
    print(f"{name}: champion -> version {args.version} ({args.reason})")
    return 0


def cmd_rollback(args) -> int:
    """Point the champion alias back at the previous champion, with the reason as a tag."""
    from .pipeline.registry import rollback

    client, name = _registry()
    old, new = rollback(client, name, args.reason)
    print(f"{name}: champion version {old} -> {new} ({args.reason})")
    return 0


def cmd_step(args) -> int:
    """Run one step from a spec file, without Dagster (what a launcher starts in a child process)."""
    from .training.steps import main as step_main

    return step_main(["--spec", args.spec])


def _materialized(result) -> dict:
    out = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        out[materialization.asset_key.to_user_string()] = materialization.metadata
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-dag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "make-labels", help="write the synthetic labeled files (prompts, demonstrations, comparisons, eval_prompts)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="assets", help="folder to write the .jsonl files to (default: assets)")
    p.add_argument(
        "--policy",
        default=None,
        help="a model directory (e.g. an sft_model materialization), or a checkpoint as base_model.pretrained names it (a .gguf), whose own samples labelers rank for part of comparisons.jsonl",
    )
    p.add_argument(
        "--policy-sft",
        default=None,
        metavar="PROFILE",
        help="instead of --policy: the SFT model PROFILE trains (on its pretrained base model) on the demonstrations written here, as InstructGPT's labelers ranked their SFT model's samples",
    )
    p.add_argument("--samples-per-prompt", type=int, default=4, help="with --policy: samples drawn per prompt")
    p.add_argument("--max-new-tokens", type=int, default=48, help="with --policy: length cap of each sample")
    p.add_argument("--prompts", type=int, default=None, help="records in prompts.jsonl (default 512)")
    p.add_argument("--demonstrations", type=int, default=None, help="records in demonstrations.jsonl (default 768)")
    p.add_argument("--comparisons", type=int, default=None, help="comparisons in all (default 1536)")
    p.add_argument(
        "--policy-comparisons",
        type=int,
        default=None,
        help="with --policy: how many of them rank the policy's samples (default 512)",
    )
    p.add_argument(
        "--kind-weight",
        action="append",
        default=None,
        metavar="KIND=W",
        help="with --policy: a task kind's weight in the policy's pairs (repeatable; each kind weighs 1 unless given), e.g. story=2 for twice the story pairs of any other kind",
    )
    p.add_argument(
        "--all-pairs",
        action="store_true",
        help="with --policy: every pair of differently scored samples of a prompt, not only best vs worst",
    )
    p.set_defaults(func=cmd_make_labels)
    p = sub.add_parser("run", help="observe the labeled files and materialize the graph into the persistent instance")
    p.add_argument(
        "--select",
        default=None,
        help="Dagster asset selection (default: the core graph, 'group:rlhf'); '*' adds DPO, GRPO, RLOO and the method table",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="every Dagster event (DEBUG) and third-party warnings")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="every asset: fresh / stale / missing, and why")
    p.add_argument("-v", "--verbose", action="store_true", help="every Dagster event (DEBUG) and third-party warnings")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("retrain", help="observe the label files, then materialize only stale and missing assets")
    p.add_argument("--dry-run", action="store_true", help="print the plan and do nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="every Dagster event (DEBUG) and third-party warnings")
    p.set_defaults(func=cmd_retrain)
    p = sub.add_parser(
        "label-batch", help="sample a labeling batch from a policy and push it to Label Studio (docs/labeling.md)"
    )
    p.add_argument(
        "--name",
        default=None,
        help="the batch's name (default: batch-<UTC time>); also its Label Studio project's title",
    )
    p.add_argument(
        "--policy",
        default=None,
        choices=["sft_model", "ppo_policy"],
        help="the policy that writes the responses (default: sft_model)",
    )
    p.add_argument(
        "--prompts", type=int, default=None, help="prompts in the batch (default: the profile's prompts_per_batch)"
    )
    p.add_argument("-k", type=int, default=None, help="responses per prompt (default 4)")
    p.add_argument("-v", "--verbose", action="store_true", help="every Dagster event (DEBUG) and third-party warnings")
    p.set_defaults(func=cmd_label_batch)
    p = sub.add_parser(
        "pull-labels",
        help="append completed Label Studio rankings (and exports in <labels>/label_studio/) to comparisons.jsonl",
    )
    p.add_argument(
        "--batch", action="append", default=None, help="pull only this batch (repeatable; default: every batch)"
    )
    p.set_defaults(func=cmd_pull_labels)
    p = sub.add_parser("promote", help="move the registry's champion alias to a version by hand")
    p.add_argument(
        "version",
        help="registered model version (see the evaluations' registry_version, or the MLflow UI's Models page)",
    )
    p.add_argument("--reason", required=True, help="why: kept as the version's champion.reason tag")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    p.add_argument("--reason", required=True, help="why: kept as a tag on both versions")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("step", help="run one step from a JSON spec (step, inputs, config, output) without Dagster")
    p.add_argument("--spec", required=True, help="the spec file; see rlhf_dag/training/steps.py")
    p.set_defaults(func=cmd_step)
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        import warnings

        warnings.simplefilter("ignore")  # third-party notices (Dagster's beta warnings, deprecations) only with -v
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
