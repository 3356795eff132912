"""bt_laplace: Bayesian Bradley-Terry reward models with pair-correct Laplace posteriors.

The top level holds what a user calls; everything else is reachable in its submodule
(``bt_laplace.curvature``, ``bt_laplace.structures``, ``bt_laplace.bradley_terry``,
``bt_laplace.metrics``, ``bt_laplace.evidence``, ``bt_laplace.options``, ...).
docs/reference/api.md says which names are stable.
"""

from bt_laplace._checks import BTLaplaceWarning
from bt_laplace.data import PairCollator, preference_dataloader
from bt_laplace.fit import fit_reward_posterior
from bt_laplace.io import load_reward_posterior
from bt_laplace.metrics import pair_metrics
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.posterior import RewardPosterior, RewardPrediction
from bt_laplace.rewards import make_reward_function
from bt_laplace.rlhf import best_of_n, rank_pairs_for_labeling
from bt_laplace.text import TextPairCollator, text_preference_dataloader

__version__ = "0.1.0"

__all__ = [
    # pair model and data
    "PairwiseRewardModel",
    "PairCollator",
    "preference_dataloader",
    "TextPairCollator",
    "text_preference_dataloader",
    # posterior
    "fit_reward_posterior",
    "RewardPosterior",
    "RewardPrediction",
    "load_reward_posterior",
    # acting on the uncertainty (more in bt_laplace.rlhf)
    "best_of_n",
    "rank_pairs_for_labeling",
    # a reward function for TRL's GRPO, RLOO and online DPO (bt_laplace.rewards)
    "make_reward_function",
    # metrics of pair probabilities
    "pair_metrics",
    # warnings
    "BTLaplaceWarning",
]

#: names the top level exported before 0.2, and the submodule that holds each now
_MOVED = {
    "BradleyTerryGGN": "bt_laplace.curvature",
    "PairKronLaplace": "bt_laplace.curvature",
    "PairKronLLLaplace": "bt_laplace.curvature",
    "nearest_kronecker_factors": "bt_laplace.curvature",
    "exact_ggn_eigenvalues": "bt_laplace.evidence",
    "exact_evidence_prior_precision": "bt_laplace.evidence",
    "PairMetrics": "bt_laplace.metrics",
    "expected_calibration_error": "bt_laplace.metrics",
    "bradley_terry_weight": "bt_laplace.bradley_terry",
    "bradley_terry_nll": "bt_laplace.bradley_terry",
    "pair_difference_moments": "bt_laplace.bradley_terry",
    "probit_preference_probability": "bt_laplace.bradley_terry",
    "mc_preference_probability": "bt_laplace.bradley_terry",
}


def __getattr__(name: str) -> object:
    """Old top-level spellings keep working, with a DeprecationWarning naming the new one."""
    if name in _MOVED:
        import importlib
        import warnings

        module = _MOVED[name]
        warnings.warn(
            f"bt_laplace.{name} moved to {module}.{name}; import it from there "
            "(the top-level name will be removed).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'bt_laplace' has no attribute {name!r}")
