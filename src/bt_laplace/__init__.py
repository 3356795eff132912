"""bt_laplace: Bayesian Bradley-Terry reward models with pair-correct Laplace posteriors."""

from bt_laplace._checks import BTLaplaceWarning
from bt_laplace.bradley_terry import (
    bradley_terry_nll,
    bradley_terry_weight,
    mc_preference_probability,
    pair_difference_moments,
    probit_preference_probability,
)
from bt_laplace.curvature import (
    BradleyTerryGGN,
    PairKronLaplace,
    PairKronLLLaplace,
    nearest_kronecker_factors,
)
from bt_laplace.data import PairCollator, preference_dataloader
from bt_laplace.evidence import exact_evidence_prior_precision, exact_ggn_eigenvalues
from bt_laplace.metrics import PairMetrics, expected_calibration_error, pair_metrics
from bt_laplace.model import PairwiseRewardModel
from bt_laplace.posterior import RewardPosterior, RewardPrediction, fit_reward_posterior

__version__ = "0.1.0"

__all__ = [
    # pair model and data
    "PairwiseRewardModel",
    "PairCollator",
    "preference_dataloader",
    # posterior
    "fit_reward_posterior",
    "RewardPosterior",
    "RewardPrediction",
    # curvature plugged into laplace-torch
    "BradleyTerryGGN",
    "PairKronLaplace",
    "PairKronLLLaplace",
    "nearest_kronecker_factors",
    # exact-GGN evidence (fit_reward_posterior(..., evidence="exact"))
    "exact_ggn_eigenvalues",
    "exact_evidence_prior_precision",
    # metrics of pair probabilities (plots: bt_laplace.plot, extra "plot")
    "pair_metrics",
    "PairMetrics",
    "expected_calibration_error",
    # Bradley-Terry math
    "bradley_terry_weight",
    "bradley_terry_nll",
    "pair_difference_moments",
    "probit_preference_probability",
    "mc_preference_probability",
    # warnings
    "BTLaplaceWarning",
]
