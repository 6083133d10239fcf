import subprocess
import sys
from pathlib import Path

import dagster as dg

from rlhf_dag.definitions import defs

REPO = Path(__file__).resolve().parent.parent

# The contract's graph (DESIGN.md, "The asset graph"): asset -> the assets and labeled files it reads.
EXPECTED_INPUTS = {
    "pretraining_corpus": [],
    "base_model": ["pretraining_corpus"],
    "sft_dataset": ["labels/demonstrations"],
    "sft_model": ["base_model", "sft_dataset"],
    "comparison_dataset": ["labels/comparisons"],
    "reward_model": ["comparison_dataset", "sft_model"],
    "ppo_policy": ["labels/prompts", "reward_model", "sft_model"],
    "policy_evaluation": ["base_model", "labels/eval_prompts", "ppo_policy", "reward_model", "sft_model"],
    "labeling_candidates": ["labels/prompts", "ppo_policy", "sft_model"],
    "dpo_policy": ["comparison_dataset", "sft_model"],
    "grpo_policy": ["labels/prompts", "reward_model", "sft_model"],
    "rloo_policy": ["labels/prompts", "reward_model", "sft_model"],
    "dpo_evaluation": ["dpo_policy", "labels/eval_prompts", "reward_model", "sft_model"],
    "grpo_evaluation": ["grpo_policy", "labels/eval_prompts", "reward_model", "sft_model"],
    "rloo_evaluation": ["labels/eval_prompts", "reward_model", "rloo_policy", "sft_model"],
    "method_comparison": ["dpo_evaluation", "grpo_evaluation", "policy_evaluation", "rloo_evaluation"],
}
# Dagster's graph: the inputs, plus every labeled file upstream of an asset as a dependency of its own,
# so that the UI marks the asset unsynced when that file changes (pipeline/assets.py).
EXPECTED_GRAPH = {
    "labels/prompts": [],
    "labels/demonstrations": [],
    "labels/comparisons": [],
    "labels/eval_prompts": [],
    **EXPECTED_INPUTS,
    "reward_model": ["comparison_dataset", "labels/comparisons", "labels/demonstrations", "sft_model"],
    "sft_model": ["base_model", "labels/demonstrations", "sft_dataset"],
    "ppo_policy": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "reward_model", "sft_model"],
    "policy_evaluation": ["base_model", "labels/comparisons", "labels/demonstrations", "labels/eval_prompts", "labels/prompts", "ppo_policy", "reward_model", "sft_model"],
    "labeling_candidates": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "ppo_policy", "sft_model"],
    "dpo_policy": ["comparison_dataset", "labels/comparisons", "labels/demonstrations", "sft_model"],
    "grpo_policy": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "reward_model", "sft_model"],
    "rloo_policy": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "reward_model", "sft_model"],
    "dpo_evaluation": ["dpo_policy", "labels/comparisons", "labels/demonstrations", "labels/eval_prompts", "reward_model", "sft_model"],
    "grpo_evaluation": ["grpo_policy", "labels/comparisons", "labels/demonstrations", "labels/eval_prompts", "labels/prompts", "reward_model", "sft_model"],
    "rloo_evaluation": ["labels/comparisons", "labels/demonstrations", "labels/eval_prompts", "labels/prompts", "reward_model", "rloo_policy", "sft_model"],
    "method_comparison": ["dpo_evaluation", "grpo_evaluation", "labels/comparisons", "labels/demonstrations", "labels/eval_prompts", "labels/prompts",
                          "policy_evaluation", "rloo_evaluation"],
}

EXPECTED_BLOCKING_CHECKS = {
    ("base_model", "base_model_learned"),
    ("sft_model", "sft_beats_base"),
    ("reward_model", "reward_model_accuracy"),
    ("ppo_policy", "ppo_within_kl_budget"),
    ("ppo_policy", "ppo_emits_eos"),
    ("ppo_policy", "ppo_finite"),
    *((f"{m}_policy", f"{m}_{gate}") for m in ("dpo", "grpo", "rloo") for gate in ("within_kl_budget", "emits_eos", "finite")),
}


def test_asset_graph_shape_matches_the_contract():
    graph = defs.resolve_asset_graph()
    shape = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert shape == EXPECTED_GRAPH


def test_the_step_functions_read_exactly_the_graph_edges():
    """bench/ runs the step functions without Dagster from STEP_INPUTS: it must be the assets' own wiring."""
    from rlhf_dag.training.steps import STEP_INPUTS

    labels = {"prompts", "demonstrations", "comparisons", "eval_prompts"}
    wiring = {step: sorted(f"labels/{n}" if n in labels else n for n in inputs) for step, inputs in STEP_INPUTS.items()}
    assert wiring == EXPECTED_INPUTS


def test_the_benchmarks_core_steps_are_the_rlhf_group_in_dependency_order():
    """bench/pipeline.py, bench/gpu.py and bench/figures.py time CORE_STEPS: the graph `make run` materializes."""
    sys.path.insert(0, str(REPO / "bench"))
    from harness import CORE_STEPS

    labels = {f"labels/{n}" for n in ("prompts", "demonstrations", "comparisons", "eval_prompts")}
    graph = defs.resolve_asset_graph()
    group = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).group_name == "rlhf"}
    assert set(CORE_STEPS) == group - labels
    for i, step in enumerate(CORE_STEPS):
        assert set(EXPECTED_INPUTS[step]) - labels <= set(CORE_STEPS[:i])


def test_label_files_are_observable_sources():
    graph = defs.resolve_asset_graph()
    for name in ("prompts", "demonstrations", "comparisons", "eval_prompts"):
        node = graph.get(dg.AssetKey(["labels", name]))
        assert node.is_observable and not node.is_materializable


def test_quality_gates_are_blocking_checks():
    checks = {(key.asset_key.to_user_string(), key.name) for key in defs.resolve_asset_graph().asset_check_keys}
    assert checks == EXPECTED_BLOCKING_CHECKS | {("policy_evaluation", "eval_prompts_held_out")}
    for check_def in defs.asset_checks:
        for spec in check_def.check_specs:
            assert spec.blocking == ((spec.asset_key.to_user_string(), spec.name) in EXPECTED_BLOCKING_CHECKS), spec.key


def test_definitions_load_from_the_cli_module():
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "list", "-m", "rlhf_dag.definitions"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    listed = set(out.stdout.split())
    assert {"pretraining_corpus", "base_model", "sft_model", "reward_model", "ppo_policy", "policy_evaluation"} <= listed


def test_training_and_data_never_import_dagster():
    for path in list((REPO / "rlhf_dag" / "training").glob("*.py")) + list((REPO / "rlhf_dag" / "data").glob("*.py")):
        text = path.read_text()
        assert "import dagster" not in text and "from dagster" not in text, path
    code = (
        "import sys, rlhf_dag.training.steps, rlhf_dag.training.pretrain, rlhf_dag.training.sft, rlhf_dag.training.reward, "
        "rlhf_dag.training.ppo, rlhf_dag.training.evaluate, rlhf_dag.data.labeling, rlhf_dag.data.corpus, "
        "rlhf_dag.data.datasets, rlhf_dag.data.feedback, rlhf_dag.data.label_studio; assert 'dagster' not in sys.modules, 'dagster was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
