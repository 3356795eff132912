"""bfloat16 and float16 reward models: fitted and queried in their own dtype, never cast.

The reference is float64 arithmetic on the model's own half-precision quantities: the layer
inputs and output gradients a bf16 forward and backward produce (hooked here, independently of
bt_laplace), widened to float64, and the exact pair GGN (or its diagonal, or its nearest
Kronecker factors) built from them. The posterior's variances must match it to 1e-3 relative:
what bt_laplace adds to the model's own rounding is float32 accumulation only.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_reward_net, word_tokenizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.structures.kron_factors import nearest_kronecker_factors

HALF = [torch.bfloat16, torch.float16]
DELTA = 1.0  # prior precision


def half_model(dtype: torch.dtype, seed: int = 0) -> btl.PairwiseRewardModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 1))
    return btl.PairwiseRewardModel(net).to(dtype).eval()


def half_pairs(dtype: torch.dtype, n: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 5, generator=g).to(dtype), torch.randint(0, 2, (n,), generator=g)


def hooked(model: btl.PairwiseRewardModel, x: torch.Tensor, layers: list[nn.Linear]):
    """Per item: each layer's input ``a`` and output gradient ``g`` of the reward, and the
    reward, from the half-precision forward and backward, widened to float64."""
    acts, outs = {}, {}

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        acts[m], outs[m] = inp[0], out

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.enable_grad():
            reward = model(x).reshape(-1)
            grads = torch.autograd.grad(reward.sum(), [outs[m] for m in layers])
    finally:
        for h in handles:
            h.remove()
    wide = [(acts[m].detach().double(), g.double()) for m, g in zip(layers, grads, strict=True)]
    return wide, reward.detach().double()


def blocks(wide) -> list[torch.Tensor]:
    """Per-item Jacobian blocks, one per parameter tensor (weight ``g a^T``, bias ``g``)."""
    out = []
    for a, g in wide:
        out += [(g[:, :, None] * a[:, None, :]).flatten(1), g]
    return out


def pair_weight(reward: torch.Tensor) -> torch.Tensor:
    d = reward[1::2] - reward[0::2]
    return torch.sigmoid(d) * torch.sigmoid(-d)


def reference_variance(model, x_pairs, x_items, layers, structure) -> torch.Tensor:
    """``J Sigma J^T`` per item in float64 from the hooked half-precision quantities."""
    wide, reward = hooked(model, x_pairs.flatten(0, 1), layers)
    w = pair_weight(reward)
    item_wide, _ = hooked(model, x_items, layers)
    train, query = blocks(wide), blocks(item_wide)
    if structure == "full":
        d = torch.cat(train, 1)
        d = d[1::2] - d[0::2]
        sigma = torch.linalg.inv((w[:, None] * d).T @ d + DELTA * torch.eye(d.shape[1]).double())
        j = torch.cat(query, 1)
        return torch.einsum("np,pq,nq->n", j, sigma, j)
    variance = torch.zeros(x_items.shape[0], dtype=torch.float64)
    for i, (d, j) in enumerate(zip(train, query, strict=True)):
        d = d[1::2] - d[0::2]
        if structure == "diag":
            variance += (j.square() / ((w[:, None] * d.square()).sum(0) + DELTA)).sum(1)
            continue
        if i % 2 == 0:  # kron weight: the nearest Kronecker product of its pair GGN block
            a, g = wide[i // 2]
            big_g, big_a = nearest_kronecker_factors(g[0::2], g[1::2], a[0::2], a[1::2], w)
            prec = torch.kron(big_g, big_a)
        else:  # bias: its exact block
            prec = (w[:, None] * d).T @ d
        sigma = torch.linalg.inv(prec + DELTA * torch.eye(prec.shape[0]).double())
        variance += torch.einsum("np,pq,nq->n", j, sigma, j)
    return variance


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_variances_equal_float64_from_the_models_own_half_precision_features(
    dtype, structure, subset
):
    model = half_model(dtype)
    x, y = half_pairs(dtype)
    post = btl.fit_reward_posterior(
        model,
        DataLoader(TensorDataset(x, y), batch_size=32),
        subset_of_weights=subset,
        hessian_structure=structure,
        prior_precision=DELTA,
    )
    assert all(p.dtype == dtype for p in model.parameters())  # never cast
    assert post.laplace.mean.dtype == torch.float32 and post.laplace.H is not None
    items = torch.randn(9, 5, generator=torch.Generator().manual_seed(2)).to(dtype)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    layers = linears[-1:] if subset == "last_layer" else linears
    want = reference_variance(model, x, items, layers, structure)
    pred = post(items)
    assert pred.variance.dtype == torch.float32
    torch.testing.assert_close(pred.variance.double(), want, rtol=1e-3, atol=0)
    with torch.no_grad():  # the means are the model's own rewards
        assert torch.equal(pred.mean, model(items).reshape(-1).float())


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "fp16"])
def test_every_query_answers_on_a_half_precision_model(dtype, tmp_path):
    model = half_model(dtype)
    x, y = half_pairs(dtype)
    post = btl.fit_reward_posterior(model, DataLoader(TensorDataset(x, y), batch_size=32))
    items = x[:12].flatten(0, 1)
    groups = torch.arange(24) % 3
    full = post(items)
    assert torch.isfinite(full.variance).all() and (full.variance > 0).all()
    probs = post.preference_probability(x[:5])
    assert probs.dtype == torch.float32 and ((probs > 0) & (probs < 1)).all()
    rel = post.relative_reward(items, groups=groups)
    assert torch.isfinite(rel.variance).all()
    best = btl.best_of_n(post, items, groups=groups)
    assert len(best.indices) == 3
    path = tmp_path / "post"
    post.save(path)
    loaded = btl.load_reward_posterior(path, model)
    torch.testing.assert_close(loaded(items).variance, full.variance, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"dtype"):  # real-valued inputs in the model's dtype
        post(items.float())


def test_casting_the_model_after_the_fit_is_refused_with_the_fix():
    model = half_model(torch.bfloat16)
    x, y = half_pairs(torch.bfloat16)
    post = btl.fit_reward_posterior(
        model, DataLoader(TensorDataset(x, y), batch_size=32), subset_of_weights="last_layer"
    )
    model.float()
    with pytest.raises(RuntimeError, match=r"weights changed.*Refit"):
        post(x[:2].flatten(0, 1).float())


TEXT_ROWS = [
    {"prompt": "what color is the sky ", "chosen": "blue", "rejected": "green"},
    {"prompt": "hello ", "chosen": "hello world", "rejected": "what"},
    {"prompt": "is it good ", "chosen": "yes very good", "rejected": "dog"},
    {"prompt": "is it good ", "chosen": "i like it", "rejected": "no no"},
]


@pytest.mark.parametrize("lora", [False, True], ids=["last-layer", "lora-kron"])
def test_a_bf16_llama_reward_model_fits_and_scores_texts_in_bf16(lora):
    """A Llama-architecture reward model as TRL loads it (bf16): a last-layer posterior, and
    an all-weights kron posterior over LoRA adapters that peft keeps in float32."""
    tok = word_tokenizer("llama")
    net = tiny_reward_net("llama", tok).to(torch.bfloat16)
    if lora:
        peft = pytest.importorskip("peft")
        config = peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj", "v_proj"])
        net = peft.get_peft_model(net, config).eval()
        assert {p.dtype for n, p in net.named_parameters() if "lora_" in n} == {torch.float32}
    model = btl.PairwiseRewardModel(net).eval()
    loader = btl.text_preference_dataloader(TEXT_ROWS, tok, batch_size=2)
    options = {"subset_of_weights": "all", "hessian_structure": "kron"} if lora else {}
    post = btl.fit_reward_posterior(model, loader, prior_precision=1.0, **options)
    assert next(net.parameters()).dtype == torch.bfloat16
    texts = ["what color is the sky blue", "hello world", "dog dog"]
    pred = post(texts)
    assert pred.mean.dtype == torch.float32 and (pred.variance > 0).all()
    with torch.no_grad():
        own = model(post.reader.items(texts)).reshape(-1).float()
    assert torch.equal(pred.mean, own)
    fn = btl.make_reward_function(post, relative=True)
    rewards = fn(prompts=["hello "] * 3, completions=["world", "bad", "hello world"])
    assert len(rewards) == 3 and all(r == r for r in rewards)
