"""The exact Laplace evidence of a Bradley-Terry reward model: moved to
:mod:`bt_laplace.prior.evidence`, the prior's floor; these names stay importable from here."""

from bt_laplace.prior.evidence import (
    EVIDENCE_MEMORY_LIMIT,
    exact_evidence_prior_precision,
    exact_ggn_eigenvalues,
    exact_pair_variances,
    fitted_ggn_eigenvalues,
)

__all__ = [
    "exact_ggn_eigenvalues",
    "fitted_ggn_eigenvalues",
    "exact_evidence_prior_precision",
    "exact_pair_variances",
    "EVIDENCE_MEMORY_LIMIT",
]
