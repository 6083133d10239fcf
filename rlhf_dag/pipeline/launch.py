"""How a training step runs: in the Dagster process, under torchrun, under accelerate, or in a Kubernetes pod.

The environment chooses (`RLHF_DAG_LAUNCHER`), never the code; run config can
override it (`resources: launcher: config: launcher: torchrun:2`). Every launcher
but `in-process` writes the step's spec next to its final folder and starts the
spec runner (`python -m rlhf_dag.pipes_step`) through a Dagster Pipes client:
`dagster.PipesSubprocessClient` for torchrun and accelerate, `dagster_k8s.PipesK8sClient`
for a pod. Rank 0 of the child reports logs and the replicas' facts through Pipes and
saves the step's result into the asset's run folder; the publisher then tracks and
publishes it exactly as an in-process result (publish.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..config import REPO_ROOT, StepConfig, active_profile, home_dir, labels_dir, mlflow_tracking_uri

LAUNCHERS = "'in-process', 'torchrun:N', 'accelerate:<config file>' or 'k8s'"


class StepLauncher(dg.ConfigurableResource):
    """How the trained assets' steps run. Lineage, MLflow and gates are the same for every launcher."""

    launcher: str | None = Field(None, description=f"{LAUNCHERS}; unset: RLHF_DAG_LAUNCHER, else 'in-process'")
    image: str = Field(
        "rlhf-dag:latest", description="k8s: the image of the step's pod (this repository installed, `pip install .`)"
    )
    namespace: str | None = Field(
        None, description="k8s: namespace of the step's pod (unset: the current one, else 'default')"
    )
    gpus: int = Field(0, description="k8s: GPUs the pod requests; more than one runs torchrun with one process per GPU")
    base_pod_spec: str = Field(
        "configs/k8s/step-pod.yaml",
        description="k8s: the pod spec (YAML) the step's container is set into: volumes, resources, node selection",
    )

    def resolved(self) -> str:
        value = self.launcher or os.environ.get("RLHF_DAG_LAUNCHER") or "in-process"
        kind, _, arg = value.partition(":")
        valid = (
            (kind == "in-process" and not arg)
            or (kind == "torchrun" and arg.isdigit() and int(arg) >= 1)
            or (kind == "accelerate" and arg)
            or (kind == "k8s" and not arg)
        )
        if not valid:
            raise dg.DagsterInvalidConfigError(
                f"launcher {value!r} (RLHF_DAG_LAUNCHER or the launcher resource's config) is not one of {LAUNCHERS}",
                [],
                None,
            )
        return value

    @property
    def in_process(self) -> bool:
        return self.resolved() == "in-process"

    def command(self, spec: Path, logs: Path) -> list[str]:
        """The child's command line: the launcher of the field around the spec runner."""
        kind, _, arg = self.resolved().partition(":")
        entry = ["-m", "rlhf_dag.pipes_step", "--spec", str(spec)]
        if kind == "torchrun":
            # --log-dir: each failing rank's error.json (its traceback), read back into the run log on failure.
            # --standalone: one node, the rendezvous on a free port (not the fixed 29500 a run killed a moment ago, or
            # another job's, may still hold)
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                arg,
                "--log-dir",
                str(logs),
                *entry,
            ]
        if kind == "accelerate":
            config = Path(arg) if Path(arg).is_absolute() else REPO_ROOT / arg
            if not config.is_file():
                raise FileNotFoundError(f"launcher accelerate:{arg}: no such accelerate config file ({config})")
            return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *entry]
        if self.gpus > 1:  # k8s: one pod, one process per GPU
            return ["torchrun", "--standalone", "--nproc_per_node", str(self.gpus), *entry]
        return ["python", *entry]

    def env(self, mlflow_run_id: str, tracking_uri: str) -> dict[str, str]:
        """What the child needs to find the same world: the run to log into, the profile, the data directories."""
        return {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_RUN_ID": mlflow_run_id,  # the TRL trainers' MLflow callback logs its curves into the asset's run
            "RLHF_DAG_PROFILE": active_profile(),
            "RLHF_DAG_HOME": str(home_dir()),
            "RLHF_DAG_LABELS_DIR": str(labels_dir()),
        }

    def pod_spec(self) -> dict:
        import yaml

        path = Path(self.base_pod_spec) if Path(self.base_pod_spec).is_absolute() else REPO_ROOT / self.base_pod_spec
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        container = spec["containers"][0]
        if self.gpus:
            limits = container.setdefault("resources", {}).setdefault("limits", {})
            limits["nvidia.com/gpu"] = str(self.gpus)  # a Kubernetes quantity
        return spec

    def launch(
        self,
        context: dg.AssetExecutionContext,
        asset: str,
        inputs: dict[str, str],
        cfg: StepConfig,
        final: Path,
        mlflow_run_id: str,
        tracking_uri: str | None = None,
    ) -> dict:
        """Run the step in its child and wait; the result is saved in `final`. Returns the child's reported facts."""
        work = final.parent / f".launch-{final.name}"
        work.mkdir(parents=True, exist_ok=True)
        spec = work / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "step": asset,
                    "inputs": inputs,
                    "config": cfg.model_dump(mode="json"),
                    "output": str(final),
                    "lineage": {"mlflow_run_id": mlflow_run_id},
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        env = self.env(mlflow_run_id, tracking_uri or mlflow_tracking_uri())
        context.log.info(f"{asset}: launching with {self.resolved()}")
        try:
            if self.resolved() == "k8s":
                from dagster_k8s import PipesK8sClient

                invocation = PipesK8sClient().run(
                    context=context,
                    image=self.image,
                    command=self.command(spec, work / "logs"),
                    namespace=self.namespace,
                    env=env,
                    base_pod_spec=self.pod_spec(),
                )
            else:
                invocation = dg.PipesSubprocessClient(cwd=str(REPO_ROOT)).run(
                    context=context, command=self.command(spec, work / "logs"), env=env
                )
        except Exception as error:  # the child exited non-zero, or the pod failed: say which rank failed and why
            raise dg.Failure(
                description=f"{asset}: the launched step failed ({self.resolved()})\n\n{rank_tracebacks(work / 'logs') or error}"
            ) from error
        finally:
            shutil.rmtree(work, ignore_errors=True)
        reported = invocation.get_materialize_result().metadata or {}
        return {key: value.value if hasattr(value, "value") else value for key, value in reported.items()}


def rank_tracebacks(logs: Path) -> str:
    """The traceback of every rank that failed, from the error files torchrun's `--log-dir` collects."""
    out = []
    for error_file in sorted(logs.glob("**/error.json")):
        message = json.loads(error_file.read_text(encoding="utf-8")).get("message", {})
        rank = error_file.parent.name
        text = message.get("extraInfo", {}).get("py_callstack") if isinstance(message, dict) else message
        out.append(f"rank {rank}:\n{text}")
    return "\n\n".join(out)
