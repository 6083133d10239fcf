"""Safe loading and no secrets in tracking."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_dag.artifacts import atomic_dir
from rlhf_dag.pipeline.resources import _public
from rlhf_dag.training.models import load_causal_lm, load_reward_model, require_safetensors
from rlhf_dag.training.pretrain import load_pretrained


@pytest.mark.parametrize(
    "loader",
    [load_causal_lm, load_reward_model, load_pretrained],
    ids=["load_causal_lm", "load_reward_model", "base_model.pretrained"],
)
def test_a_pickle_only_model_directory_is_refused_with_an_explanation(tmp_path, loader):
    """Every loader: upstream causal LMs, reward models and critics, and a user's `base_model.pretrained` directory."""
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"no \.safetensors weights \(found config\.json, pytorch_model\.bin\).*pickle"
    ):
        loader(str(tmp_path))


@pytest.mark.parametrize(
    "loader",
    [load_causal_lm, load_reward_model, load_pretrained],
    ids=["load_causal_lm", "load_reward_model", "base_model.pretrained"],
)
def test_no_loader_swaps_in_kernels_from_the_hub(tmp_path, loader, monkeypatch):
    """transformers 5.25 kernelizes every model it loads (layers replaced by code downloaded from the Hub) when the
    `kernels` package is installed and USE_HUB_KERNELS is unset; on an H200 that stopped sft_model offline. Every
    loader of ours asks for none. Recorded at `set_use_kernels`, which from_pretrained calls with what it decided."""
    from toy import causal_lm, toy_tokenizer
    from transformers import PreTrainedModel

    asked = []
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    monkeypatch.setattr(
        PreTrainedModel, "set_use_kernels", lambda self, use_kernels, *a, **k: asked.append(use_kernels)
    )
    causal_lm().save_pretrained(tmp_path)
    toy_tokenizer().save_pretrained(tmp_path)
    loader(str(tmp_path))
    assert asked and not any(asked), asked


def test_a_missing_model_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        require_safetensors(tmp_path / "nope")


def test_credentials_never_reach_mlflow_params():
    params = {"learning_rate": 1e-3, "hf_token": "hf_abc", "api_key": "k", "db_password": "p", "seed": 0}
    assert _public(params) == {"learning_rate": 1e-3, "seed": 0}


def test_atomic_dir_leaves_nothing_when_the_block_fails(tmp_path):
    final = tmp_path / "sft_model" / "run-1"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("killed mid-save")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert (final / "model.safetensors").read_bytes() == b"whole"
    with pytest.raises(FileExistsError):
        with atomic_dir(final):
            pass


def test_atomic_dir_removes_the_temp_folders_of_dead_runs_only(tmp_path):
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    ).stdout.strip()
    host = socket.gethostname()
    folder = tmp_path / "sft_model"
    killed = folder / f".tmp-run-1-{host}-{dead_pid}"
    concurrent = folder / f".tmp-run-2-{host}-{os.getpid()}"  # a live process still writing
    elsewhere = folder / f".tmp-run-3-another-host-{dead_pid}"  # a process this host cannot see
    for tmp in (killed, concurrent, elsewhere):
        tmp.mkdir(parents=True)
        (tmp / "model.safetensors").write_bytes(b"half")
    with atomic_dir(folder / "run-4") as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert sorted(p.name for p in folder.iterdir()) == sorted([concurrent.name, elsewhere.name, "run-4"])
