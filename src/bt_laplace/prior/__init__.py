"""The prior precision, every way bt_laplace sets it, on one floor.

Below the posterior and the fit, taking plain objects (a laplace-torch posterior, its
:class:`~bt_laplace.predictive.Predictive`), never a :class:`~bt_laplace.RewardPosterior`:

- :mod:`~bt_laplace.prior.settings`: :class:`PriorSetting`, the checked choice of method,
  evidence and optimizer settings, and the table of what each method takes;
- :mod:`~bt_laplace.prior.marglik`: laplace-torch's marginal-likelihood optimizer on the
  eigenvalues of the fitted structure's curvature;
- :mod:`~bt_laplace.prior.evidence`: the exact Bradley-Terry evidence and its maximizer, on
  the pair kernel of :mod:`~bt_laplace.prior.kernel` (gathered from the kernel of the pairs'
  distinct items, reduced where they are fewer than the pairs), from the pass over the pairs
  of :mod:`~bt_laplace.prior.pair_io`;
- :mod:`~bt_laplace.prior.gridsearch`: the validation NLL of pair probabilities and its grid;
- :mod:`~bt_laplace.prior.calibration`: the default's held-out calibration;
- :func:`set_prior_precision`: the one entry point, called alike by
  :func:`~bt_laplace.fit_reward_posterior` and
  :meth:`~bt_laplace.RewardPosterior.optimize_prior_precision`.

A new way of setting the prior is one module here, one branch of :func:`set_prior_precision`
and one row of :data:`~bt_laplace.prior.settings.PRIOR_SETTINGS`.
"""

from bt_laplace.prior.marglik import curvature_eigenvalues, optimize_marglik
from bt_laplace.prior.precision import reset_prior_precision, set_prior_precision
from bt_laplace.prior.settings import PRIOR_KWARGS, PRIOR_SETTINGS, PRIOR_STRUCTURES, PriorSetting

__all__ = [
    "PriorSetting",
    "set_prior_precision",
    "reset_prior_precision",
    "optimize_marglik",
    "curvature_eigenvalues",
    "PRIOR_SETTINGS",
    "PRIOR_KWARGS",
    "PRIOR_STRUCTURES",
]
