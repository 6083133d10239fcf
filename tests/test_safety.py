"""Safe loading and no secrets in tracking."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_dag.artifacts import atomic_dir
from rlhf_dag.pipeline.resources import _public
from rlhf_dag.training.models import load_causal_lm, require_safetensors


def test_a_pickle_only_model_directory_is_refused_with_an_explanation(tmp_path):
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no \.safetensors weights \(found config\.json, pytorch_model\.bin\).*pickle"):
        load_causal_lm(tmp_path)


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
