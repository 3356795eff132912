"""Data-parallel fits on real torch.distributed process groups (gloo, CPU): every rank ends
with the posterior of all the pairs, equal to one process's to relative 1e-5 in float64
(in practice to rounding), for every structure, subset and way of setting the prior."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import D_IN, make_net
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl

CONFIGS = [
    {"subset_of_weights": s, "hessian_structure": h, "evidence": "posterior"}
    for s in ("all", "last_layer")
    for h in ("diag", "kron", "full")
] + [
    {"subset_of_weights": "all", "hessian_structure": "kron", "evidence": "exact"},  # N x N
    {"subset_of_weights": "last_layer", "hessian_structure": "full", "evidence": "exact"},  # P x P
    {"subset_of_weights": "all", "hessian_structure": "diag", "prior_precision": "gridsearch"},
    {"subset_of_weights": "all", "hessian_structure": "kron", "prior_precision": 0.7},
    # kron factors recomputed pass by pass, each half-step summed over ranks
    {"subset_of_weights": "all", "prior_precision": 0.7, "backend_kwargs": {"kron_store_limit": 0}},
    # low-rank factors (rank 3 of width 7): each rank's sketch summed over ranks
    {
        "subset_of_weights": "all",
        "hessian_structure": "kron",
        "evidence": "posterior",
        "backend_kwargs": {"kron_rank": 3, "kron_full_width": 4},
    },
    {},  # the automatic default
    # pairs among 40 items: the kernel through the distinct items, gathered by input
    {"subset_of_weights": "all", "hessian_structure": "kron", "evidence": "exact", "pooled": 60},
    {"pooled": 60},
    # 200 pairs among 12 items, more pairs than parameters: the items' kernel, not the GGN
    {"subset_of_weights": "all", "hessian_structure": "diag", "evidence": "exact", "pooled": 200},
    # TRL's centering term: its rows in the kron factors and in the gathered pair kernel
    {"center_rewards_coefficient": 0.2},
    {
        "subset_of_weights": "all",
        "hessian_structure": "diag",
        "evidence": "exact",
        "center_rewards_coefficient": 0.2,
        "pooled": 60,
    },
]


def _data(pooled: int = 0):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(60, 2, D_IN, generator=g, dtype=torch.float64)
    if pooled:  # pairs of fewer items than pairs: 40 items for 60 pairs, 12 for more
        n_items = 40 if pooled == 60 else 12
        pool = torch.randn(n_items, D_IN, generator=g, dtype=torch.float64)
        x = pool[torch.randint(0, n_items, (pooled, 2), generator=g)]
    y = torch.randint(0, 2, (len(x),), generator=g)
    xv = torch.randn(30, 2, D_IN, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 2, (30,), generator=g)
    return x, y, xv, yv


def _fit(x, y, xv, yv, config, distributed):
    model = btl.PairwiseRewardModel(make_net()).eval()
    kw = dict(config)
    if kw.get("prior_precision") == "gridsearch":
        kw["val_loader"] = DataLoader(TensorDataset(xv, yv), batch_size=8)
        kw["grid_size"] = 9
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    return btl.fit_reward_posterior(model, loader, distributed=distributed, **kw)


def _rank(rank: int, world: int, port: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        q = torch.randn(9, D_IN, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        pairs = torch.randn(5, 2, D_IN, generator=torch.Generator().manual_seed(3)).double()
        for config in CONFIGS:
            config = dict(config)
            x, y, xv, yv = _data(config.pop("pooled", 0))
            # this rank's shard (pairs rank, rank + world, ...), against all pairs in one process
            shard = _fit(x[rank::world], y[rank::world], xv[rank::world], yv[rank::world],
                         config, distributed=True)  # fmt: skip
            whole = _fit(x, y, xv, yv, config, distributed=False)
            assert shard.laplace.n_data == whole.laplace.n_data == len(x), config
            torch.testing.assert_close(
                shard.prior_precision, whole.prior_precision, rtol=1e-5, atol=0, msg=str(config)
            )
            torch.testing.assert_close(
                shard(q).variance, whole(q).variance, rtol=1e-5, atol=0, msg=str(config)
            )
            torch.testing.assert_close(
                shard.preference_probability(pairs),
                whole.preference_probability(pairs),
                rtol=1e-5,
                atol=0,
                msg=str(config),
            )
            torch.testing.assert_close(
                shard.log_marginal_likelihood(),
                whole.log_marginal_likelihood(),
                rtol=1e-5,
                atol=0,
                msg=str(config),
            )
        # opting out: each rank keeps the posterior of its own shard
        alone = _fit(x[rank::world], y[rank::world], xv, yv, CONFIGS[0], distributed=False)
        assert alone.laplace.n_data == len(range(rank, len(x), world))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_posterior_of_all_pairs(world):
    mp.spawn(_rank, args=(world, _free_port()), nprocs=world, join=True)


def test_no_process_group_means_one_process(pair_loader, reward_model):
    from bt_laplace._distributed import Processes

    assert not Processes().active
    t = torch.ones(3)
    assert Processes().sum(t) is t and Processes().gather_rows(t) is t
