"""Config: None is a value a user can set, through run config and through a launcher's spec; a profile's typo is an error."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import dagster as dg
import pytest

from rlhf_dag.config import PROFILES, check_profiles, resolve
from rlhf_dag.pipeline.publish import SET_TO_NONE, asset_config_class, resolve_config


def _context(asset: str) -> SimpleNamespace:
    return SimpleNamespace(asset_key=dg.AssetKey(asset), log=logging.getLogger("test"))


def test_an_override_of_none_is_kept_and_an_absent_field_takes_the_profile_value():
    assert resolve("ppo_policy").missing_eos_penalty == -1.0
    assert resolve("ppo_policy", {"missing_eos_penalty": None}).missing_eos_penalty is None
    # a launcher writes the whole resolved config into its spec; the spec runner resolves it again
    spec = resolve("ppo_policy", {"missing_eos_penalty": None}).model_dump(mode="json")
    assert resolve("ppo_policy", spec).missing_eos_penalty is None


def test_run_config_sets_a_field_to_none_by_naming_it_and_leaves_unset_fields_to_the_profile():
    config_class = asset_config_class("ppo_policy")
    assert resolve_config(_context("ppo_policy"), config_class()).missing_eos_penalty == -1.0
    resolved = resolve_config(
        _context("ppo_policy"), config_class(**{SET_TO_NONE: ["missing_eos_penalty"], "learning_rate": 1e-4})
    )
    assert resolved.missing_eos_penalty is None and resolved.learning_rate == 1e-4
    with pytest.raises(
        ValueError,
        match="ppo_policy: run config set_to_none names 'learning_rate', which is not one of its fields that can be None",
    ):
        resolve_config(_context("ppo_policy"), config_class(**{SET_TO_NONE: ["learning_rate"]}))


def test_run_config_offers_set_to_none_only_where_a_field_can_be_none():
    assert SET_TO_NONE in asset_config_class("ppo_policy").model_fields
    assert SET_TO_NONE not in asset_config_class("sft_dataset").model_fields


def test_a_profile_that_names_an_unknown_asset_or_field_is_an_error():
    check_profiles(PROFILES)  # the shipped profiles are well-formed
    with pytest.raises(ValueError, match=r"PROFILES\['smoke'\] names 'ppo_polcy', which is not an asset"):
        check_profiles({"smoke": {"ppo_polcy": {"iterations": 2}}})
    with pytest.raises(
        ValueError, match=r"PROFILES\['smoke'\]\['ppo_policy'\] sets iteratons, not a field of PPOConfig"
    ):
        check_profiles({"smoke": {"ppo_policy": {"iteratons": 2}}})
    with pytest.raises(ValueError, match=r"PROFILES\['gpu'\]\['gates'\] sets kl_budgt, not a field of GateConfig"):
        check_profiles({"gpu": {"gates": {"kl_budgt": 2.0}}})
