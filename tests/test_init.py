"""The top level: what a user calls, and the old spellings with a deprecation warning."""

from __future__ import annotations

import importlib

import pytest

import bt_laplace as btl


@pytest.mark.parametrize("name", sorted(btl._MOVED))
def test_moved_top_level_names_still_work_with_a_deprecation_warning(name):
    module = importlib.import_module(btl._MOVED[name])
    with pytest.warns(DeprecationWarning, match=rf"bt_laplace.{name} moved to {module.__name__}"):
        assert getattr(btl, name) is getattr(module, name)


def test_top_level_holds_what_a_user_calls():
    assert sorted(btl.__all__) == [
        "BTLaplaceWarning",
        "PairCollator",
        "PairwiseRewardModel",
        "RewardPosterior",
        "RewardPrediction",
        "TextPairCollator",
        "best_of_n",
        "fit_reward_posterior",
        "load_reward_posterior",
        "make_reward_function",
        "pair_metrics",
        "preference_dataloader",
        "rank_pairs_for_labeling",
        "text_preference_dataloader",
    ]
    assert all(hasattr(btl, n) for n in btl.__all__)
    with pytest.raises(AttributeError, match="no attribute 'LayerIO'"):
        btl.LayerIO  # noqa: B018


def test_fit_reward_posterior_moved_out_of_posterior_with_a_warning():
    from bt_laplace import fit, posterior

    with pytest.warns(DeprecationWarning, match="moved to bt_laplace.fit"):
        assert (
            posterior.fit_reward_posterior is fit.fit_reward_posterior is btl.fit_reward_posterior
        )
