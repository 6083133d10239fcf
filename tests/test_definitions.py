import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from rlhf_dag.definitions import defs
from rlhf_dag.labeling_definitions import defs as labeling_defs

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
    "policy_evaluation": [
        "base_model",
        "labels/comparisons",
        "labels/demonstrations",
        "labels/eval_prompts",
        "labels/prompts",
        "ppo_policy",
        "reward_model",
        "sft_model",
    ],
    "labeling_candidates": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "ppo_policy", "sft_model"],
    "dpo_policy": ["comparison_dataset", "labels/comparisons", "labels/demonstrations", "sft_model"],
    "grpo_policy": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "reward_model", "sft_model"],
    "rloo_policy": ["labels/comparisons", "labels/demonstrations", "labels/prompts", "reward_model", "sft_model"],
    "dpo_evaluation": [
        "dpo_policy",
        "labels/comparisons",
        "labels/demonstrations",
        "labels/eval_prompts",
        "reward_model",
        "sft_model",
    ],
    "grpo_evaluation": [
        "grpo_policy",
        "labels/comparisons",
        "labels/demonstrations",
        "labels/eval_prompts",
        "labels/prompts",
        "reward_model",
        "sft_model",
    ],
    "rloo_evaluation": [
        "labels/comparisons",
        "labels/demonstrations",
        "labels/eval_prompts",
        "labels/prompts",
        "reward_model",
        "rloo_policy",
        "sft_model",
    ],
    "method_comparison": [
        "dpo_evaluation",
        "grpo_evaluation",
        "labels/comparisons",
        "labels/demonstrations",
        "labels/eval_prompts",
        "labels/prompts",
        "policy_evaluation",
        "rloo_evaluation",
    ],
}

EXPECTED_BLOCKING_CHECKS = {
    ("base_model", "base_model_learned"),
    ("sft_model", "sft_beats_base"),
    ("reward_model", "reward_model_accuracy"),
    ("ppo_policy", "ppo_within_kl_budget"),
    ("ppo_policy", "ppo_emits_eos"),
    ("ppo_policy", "ppo_finite"),
    *(
        (f"{m}_policy", f"{m}_{gate}")
        for m in ("dpo", "grpo", "rloo")
        for gate in ("within_kl_budget", "emits_eos", "finite")
    ),
}


def _shape(graph, keys) -> dict[str, list[str]]:
    return {key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys) for key in keys}


def test_asset_graph_shape_matches_the_contract():
    """Both code locations together: the training graph, and the labeling batches in a location of their own."""
    graph, labeling = defs.resolve_asset_graph(), labeling_defs.resolve_asset_graph()
    shape = _shape(graph, graph.get_all_asset_keys()) | _shape(labeling, labeling.materializable_asset_keys)
    assert shape == EXPECTED_GRAPH


def test_the_step_functions_read_exactly_the_graph_edges():
    """The table of steps (graph.py), from which the assets, the spec runner and bench/ take their inputs, is the
    contract's graph: this expectation is written out by hand from DESIGN.md, not derived from the table."""
    from rlhf_dag import graph

    wiring = {
        step.name: sorted(f"labels/{n}" if n in graph.LABEL_FILES else n for n in step.inputs) for step in graph.STEPS
    }
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


def test_the_training_location_has_no_partitioned_asset():
    """`dagster asset materialize -m rlhf_dag.definitions --select '*'` would refuse to run without --partition."""
    graph = defs.resolve_asset_graph()
    assert [key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).is_partitioned] == []
    assert dg.AssetKey("labeling_candidates") not in graph.get_all_asset_keys()


def test_the_labeling_location_reads_the_training_locations_assets_as_external():
    """labeling_candidates, one partition per batch; its upstream are the training location's assets, declared here as
    external (never materialized from here) and loaded by the same IO manager from the same handle store."""
    from rlhf_dag.pipeline.labeling_loop import LABELING_BATCHES

    graph, training = labeling_defs.resolve_asset_graph(), defs.resolve_asset_graph()
    assert graph.materializable_asset_keys == {dg.AssetKey("labeling_candidates")}
    node = graph.get(dg.AssetKey("labeling_candidates"))
    assert node.partitions_def == LABELING_BATCHES
    for parent in node.parent_keys:
        assert not graph.get(parent).is_materializable and not graph.get(parent).is_observable, parent
        assert training.get(parent).is_materializable or training.get(parent).is_observable, parent
    assert labeling_defs.resources["io_manager"].base_dir == defs.resources["io_manager"].base_dir


def test_the_workspace_serves_both_locations_and_each_loads():
    """`make ui` (dagster dev -w workspace.yaml): the training graph and the labeling batches, validated as Dagster loads them."""
    locations = {
        entry["python_module"]["location_name"]: entry["python_module"]["module_name"]
        for entry in yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    }
    assert locations == {"rlhf_dag": "rlhf_dag.definitions", "rlhf_dag_labeling": "rlhf_dag.labeling_definitions"}
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in locations:
        assert f"Validation successful for code location {name}." in done.stdout + done.stderr


@pytest.mark.slow
def test_materialize_select_star_from_the_dagster_cli(tmp_path):
    """The first thing a Dagster user types: every asset of the training location, core graph and alternatives, in one run."""
    env = {
        **os.environ,
        "RLHF_DAG_PROFILE": "smoke",
        "RLHF_DAG_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "RLHF_DAG_LABELS_DIR": str(tmp_path / "labels"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    shutil.copytree(REPO / "assets", tmp_path / "labels")
    (tmp_path / "dagster").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "rlhf_dag.definitions", "--select", "*"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    graph = defs.resolve_asset_graph()
    expected = {key.to_user_string() for key in graph.materializable_asset_keys}
    assert {graph.get(dg.AssetKey(a)).group_name for a in expected} == {"rlhf", "alternatives"}
    artifacts = tmp_path / "home" / "artifacts"
    runs = {
        asset.name: [d.name for d in asset.iterdir() if not d.name.startswith(".")] for asset in artifacts.iterdir()
    }
    assert set(runs) == expected
    assert len({run for dirs in runs.values() for run in dirs}) == 1, runs  # each asset once, all in the one run


def test_definitions_load_from_the_cli_module():
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "list", "-m", "rlhf_dag.definitions"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    listed = set(out.stdout.split())
    assert {
        "pretraining_corpus",
        "base_model",
        "sft_model",
        "reward_model",
        "ppo_policy",
        "policy_evaluation",
    } <= listed


def test_training_imports_nothing_of_the_synthetic_world_nor_data_anything_of_training():
    """The synthetic world (task family, gold labeler, generator) is a plug-in: training/ reaches the judge only by the
    dotted path a config names (training/judge.py). And the layers point down: data/ never imports training/."""
    import ast

    synthetic = {"rlhf_dag.data.domain", "rlhf_dag.data.gold", "rlhf_dag.data.synthetic_labels"}

    def imported(path: Path, package: str) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module
                names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        return names

    for path in (REPO / "rlhf_dag" / "training").glob("*.py"):
        assert not imported(path, "rlhf_dag.training") & synthetic, path
    for path in (REPO / "rlhf_dag" / "data").glob("*.py"):
        assert not {n for n in imported(path, "rlhf_dag.data") if n.startswith("rlhf_dag.training")}, path


def test_training_and_data_never_import_dagster():
    for path in list((REPO / "rlhf_dag" / "training").glob("*.py")) + list((REPO / "rlhf_dag" / "data").glob("*.py")):
        text = path.read_text()
        assert "import dagster" not in text and "from dagster" not in text, path
    code = (
        "import sys, rlhf_dag.training.steps, rlhf_dag.training.pretrain, rlhf_dag.training.sft, rlhf_dag.training.reward, "
        "rlhf_dag.training.ppo, rlhf_dag.training.evaluate, rlhf_dag.data.synthetic_labels, rlhf_dag.data.corpus, "
        "rlhf_dag.data.datasets, rlhf_dag.data.feedback, rlhf_dag.data.label_studio; assert 'dagster' not in sys.modules, 'dagster was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
