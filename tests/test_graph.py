"""The table of steps (rlhf_dag/graph.py): every row resolves, and a new method is one module plus one row."""

from __future__ import annotations

import importlib
import textwrap

import dagster as dg
import pytest

from rlhf_dag import graph
from rlhf_dag.config import StepConfig, config_class, resolve


def test_every_row_names_a_config_class_and_a_step_function_and_reads_only_what_comes_before_it():
    seen: set[str] = set()
    for step in graph.STEPS:
        assert issubclass(config_class(step.name), StepConfig), step.name
        assert callable(graph.load(step.function)), step.name
        assert set(step.inputs) <= seen | set(graph.LABEL_FILES), (
            f"{step.name} reads {set(step.inputs) - seen - set(graph.LABEL_FILES)} before it is built"
        )
        seen.add(step.name)
    assert len(seen) == len(graph.STEPS)  # no step declared twice


def test_upstream_labels_are_those_of_the_step_and_of_every_step_above_it():
    assert graph.upstream_labels("sft_dataset") == ["demonstrations"]
    assert graph.upstream_labels("reward_model") == ["comparisons", "demonstrations"]
    assert graph.upstream_labels("policy_evaluation") == ["comparisons", "demonstrations", "eval_prompts", "prompts"]
    assert graph.upstream_steps("reward_model") == [
        "sft_model",
        "base_model",
        "pretraining_corpus",
        "sft_dataset",
        "comparison_dataset",
    ]


TOY_METHOD = '''
    """A toy step: how many prompts the prompts file holds, and their mean length (one module: config and step)."""

    from pydantic import Field

    from rlhf_dag.config import StepConfig
    from rlhf_dag.data.label_files import load_labels
    from rlhf_dag.training.result import StepResult, step


    class PromptStatsConfig(StepConfig):
        """`prompt_stats`: counts the prompts."""

        scale: float = Field(1.0, description="what the mean length is multiplied by")


    @step
    def prompt_stats(inputs, cfg: PromptStatsConfig) -> StepResult:
        prompts = [r["prompt"] for r in load_labels(inputs["prompts"], "prompts").records]
        metrics = {"prompts": len(prompts), "mean_length": cfg.scale * sum(map(len, prompts)) / len(prompts)}
        return StepResult("prompt_stats", metrics, list(metrics), inputs=inputs, records={"stats.json": metrics})
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """The toy module on the import path and its one row appended to the table: the two things a new method adds."""
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY_METHOD))
    monkeypatch.syspath_prepend(str(tmp_path))
    row = graph.Step(
        "prompt_stats",
        ("prompts",),
        "toy_method:PromptStatsConfig",
        "toy_method:prompt_stats",
        "Prompt statistics (a toy method).",
        group="alternatives",
        kind="table",
        automation="alternative",
    )
    monkeypatch.setattr(graph, "STEPS", (*graph.STEPS, row))
    import rlhf_dag.pipeline.assets

    importlib.reload(rlhf_dag.pipeline.assets)
    yield row
    monkeypatch.undo()
    importlib.reload(rlhf_dag.pipeline.assets)


def test_a_new_method_is_one_module_and_one_row(toy_method, isolated_env):
    from rlhf_dag.config import labels_dir
    from rlhf_dag.definitions import build_definitions
    from rlhf_dag.training.result import StepResult
    from rlhf_dag.training.steps import run_step

    assert resolve("prompt_stats", {"scale": 2.0}).scale == 2.0  # its config, through the profile layer
    direct = run_step("prompt_stats", {"prompts": str(labels_dir() / "prompts.jsonl")})  # the spec runner
    assert direct.metrics["prompts"] > 0

    defs = build_definitions()
    node = defs.resolve_asset_graph().get(dg.AssetKey("prompt_stats"))
    assert node.group_name == "alternatives" and {k.to_user_string() for k in node.parent_keys} == {"labels/prompts"}
    run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dg.DagsterInstance.get(),
        asset_selection=[dg.AssetKey("prompt_stats")],
        run_config={"ops": {"prompt_stats": {"config": {"scale": 2.0}}}},
    )
    assert run.success
    handle = run.output_for_node("prompt_stats")
    saved = StepResult.load(handle.path)
    assert saved.records["stats.json"]["mean_length"] == pytest.approx(2 * direct.metrics["mean_length"])
    assert saved.metrics["prompts"] == direct.metrics["prompts"]
    dg.DagsterInstance.get().wipe_assets([dg.AssetKey("prompt_stats")])  # the shared instance keeps only the real graph
