"""OpenRLHF's own remote-reward client against our server, so that a protocol change fails
here rather than in a user's run.

What runs: ``SingleTurnAgentExecutor`` of OpenRLHF 0.11.2 (``openrlhf/utils/agent.py``, read
from the installed ``openrlhf`` wheel), the code a PPO/GRPO rollout calls for every sample:
it tokenizes the prompt (``add_special_tokens=False``), asks the LLM engine for a response,
decodes prompt and response with ``skip_special_tokens=False``, posts the query to
``--remote_rm_url`` (``_fetch_rewards_via_http``: aiohttp, 5 tries) and records
``reward``, ``scores`` and ``extra_logs`` -- or ``reward=None`` on any failure, logged at INFO.
The LLM engine is a stub that returns fixed response ids; nothing else is stubbed but the
module's logger, as OpenRLHF's own ``tests/test_agent.py`` does.

Why from the wheel, and how it gets there: ``openrlhf`` declares ray, deepspeed==0.19.6,
flash-attn==2.8.3 (a CUDA build), transformers==5.15.0 and more as dependencies, so it
cannot be a dependency of the ``test`` extra (pip extras cannot say ``--no-deps``, and the
pins conflict with ours). ``agent.py`` itself needs only aiohttp (in the ``test`` extra), and
is loaded by path, without importing the ``openrlhf`` package (whose ``__init__`` imports
deepspeed). CI installs the wheel without its dependencies (``.ci/run``: ``pip install
--no-deps openrlhf==0.11.2``); nothing is vendored and nothing is downloaded at test time.
Without the wheel the test fails, saying how to install it (a skip would let a protocol
change pass CI unseen).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import logging
import sys
from types import SimpleNamespace

import pytest
from conftest import CHAT_TEMPLATE, tiny_reward_net, word_tokenizer

import bt_laplace as btl
from bt_laplace.rlhf import penalize

serve = pytest.importorskip("bt_laplace.serve")  # the serve extra (in the test extra)
pytest.importorskip("aiohttp")  # in the test extra: agent.py's one dependency
from test_serve import ROWS, assert_equal, running  # noqa: E402

OPENRLHF = "0.11.2"
INSTALL = f"pip install --no-deps openrlhf=={OPENRLHF}"


@pytest.fixture
def agent(monkeypatch):
    """OpenRLHF's ``openrlhf/utils/agent.py`` from the installed wheel, its logger stubbed."""
    try:
        dist = importlib.metadata.distribution("openrlhf")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"OpenRLHF's client is not installed; run `{INSTALL}` (see .ci/run).")
    assert dist.version == OPENRLHF, f"openrlhf {dist.version} installed; run `{INSTALL}`"
    path = dist.locate_file("openrlhf/utils/agent.py")
    logging_utils = SimpleNamespace(init_logger=logging.getLogger)
    monkeypatch.setitem(sys.modules, "openrlhf.utils.logging_utils", logging_utils)
    spec = importlib.util.spec_from_file_location("_openrlhf_agent", str(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Engine:
    """The LLM engine's one method the executor calls: ``generate`` returns ``response_ids``."""

    def __init__(self, response_ids: list[int]) -> None:
        self.response_ids = response_ids

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        output = SimpleNamespace(token_ids=self.response_ids, finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[output])


def rollout(agent, url: str, tokenizer, prompt: str, response: str) -> dict:
    """One sample through OpenRLHF's SingleTurnAgentExecutor.execute, rewarded by ``url``."""
    executor = agent.SingleTurnAgentExecutor(f"{url}/get_reward")
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    params = SimpleNamespace(max_tokens=len(response_ids), logprobs=None)
    return asyncio.run(executor.execute(prompt, "", params, 4096, tokenizer, Engine(response_ids)))


def test_openrlhf_client_records_the_posterior_rewards(agent) -> None:
    tok = word_tokenizer("llama")
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE  # renders <s>, as Llama's does
    model = btl.PairwiseRewardModel(tiny_reward_net("llama", tok).double()).eval()
    loader = btl.text_preference_dataloader(ROWS, tok, batch_size=4, max_length=12)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full", prior_precision=1.0
    )
    messages = [{"role": "user", "content": "what color is the sky"}]
    chat_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    long = " ".join(["the cat sat on the mat"] * 12)  # over max_length and the 64 positions
    samples = {  # prompt, response, what the posterior scores
        "chat": (chat_prompt, "blue </s>", [messages + [{"role": "assistant", "content": "blue"}]]),
        "bos": ("<s> what color is the sky", " blue </s>", ["what color is the sky blue"]),
        "long": ("i like it", f" {long} </s>", [f"i like it {long}"]),
    }
    with pytest.warns(btl.BTLaplaceWarning, match=r"1 of 1 query texts.*last 64 tokens"):
        with running(serve.create_app(post, log_truncated=True)) as url:
            outputs = {k: rollout(agent, url, tok, p, r) for k, (p, r, _) in samples.items()}
        wants = {k: post(texts) for k, (_, _, texts) in samples.items()}
    assert outputs["chat"]["observation_tokens"][:2] == [tok.bos_token_id, 5]  # <s> <|user|>
    for name, output in outputs.items():
        mean, variance = wants[name]
        assert output["reward"] is not None, f"{name}: OpenRLHF recorded no reward"
        assert_equal(output["reward"], penalize(mean, variance))
        assert output["scores"] == output["reward"]
        assert_equal(output["extra_logs"]["reward_mean"], mean)
        assert_equal(output["extra_logs"]["reward_std"], variance.sqrt())
        assert output["extra_logs"]["truncated"] == [float(name == "long")]
