"""Brute-force float64 references for the tests and the benchmarks, not for production.

What the library computes fast and structured, these compute slowly and plainly, so each claim
of the library can be checked against them (as curvlinops ships its ``torch.func`` references):

- :mod:`bt_laplace.testing.ggn`: per-item Jacobians by ``torch.func`` (``jacrev`` and ``vmap``),
  the exact Bradley-Terry GGN ``sum_pairs p(1-p) (J1 - J0)^T (J1 - J0)`` and the
  nearest-Kronecker floor of a block (Van Loan-Pitsianis rearrangement and SVD);
- :mod:`bt_laplace.testing.matrix_free`: the same floor and errors of Kronecker factors for
  weight blocks too large to form, from per-item layer inputs and output gradients;
- :mod:`bt_laplace.testing.problems`: teacher-labelled preference pairs and MAP training with
  the Bradley-Terry loss, shared by the benchmarks;
- :mod:`bt_laplace.testing.tiny`: tiny fitted posteriors (an MLP on random pairs, a one-layer
  GPT-2 on text pairs) for examples and doctests, each written once.

Everything here forms per-item Jacobians or dense ``(P, P)`` matrices: use it on small models
in float64, never in a training or serving loop.
"""

from bt_laplace.testing.ggn import (
    exact_ggn,
    exact_last_layer_ggn,
    item_jacobians,
    kronecker_rearrangement,
    nearest_kronecker_floor,
    rel_err,
)
from bt_laplace.testing.matrix_free import (
    frob_sq,
    inner,
    item_taps,
    kron_rel_error,
    pair_forms,
    r_apply,
    top_singular,
)
from bt_laplace.testing.problems import bradley_terry_epoch, mlp, teacher_pairs, train_map
from bt_laplace.testing.tiny import (
    tiny_loader,
    tiny_model,
    tiny_posterior,
    tiny_text_posterior,
    tiny_tokenizer,
)

__all__ = [
    # dense references (ggn)
    "item_jacobians",
    "exact_ggn",
    "exact_last_layer_ggn",
    "kronecker_rearrangement",
    "nearest_kronecker_floor",
    "rel_err",
    # matrix-free floor (matrix_free)
    "item_taps",
    "frob_sq",
    "pair_forms",
    "inner",
    "r_apply",
    "top_singular",
    "kron_rel_error",
    # problems and MAP training (problems)
    "mlp",
    "teacher_pairs",
    "bradley_terry_epoch",
    "train_map",
    # tiny fitted posteriors for examples and doctests (tiny)
    "tiny_model",
    "tiny_loader",
    "tiny_posterior",
    "tiny_tokenizer",
    "tiny_text_posterior",
]
