"""The OpenRLHF reward server: started with uvicorn on localhost and called over real HTTP
(httpx); rewards against the posterior queried directly, batching of concurrent requests,
refused requests, failures that stay with their request, and the command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import tiny_reward_net, word_tokenizer

import bt_laplace as btl
from bt_laplace.rlhf import penalize

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
serve = pytest.importorskip("bt_laplace.serve")

SRC = str(Path(btl.__file__).resolve().parents[1])
ROWS = [
    {"prompt": "what color is the sky", "chosen": " blue", "rejected": " green"},
    {"chosen": "the cat sat on the mat", "rejected": "no"},
    {"chosen": "yes very good", "rejected": "bad"},
    {"chosen": "hello world", "rejected": "dog"},
    {"prompt": "i like it", "chosen": " yes", "rejected": " no no no"},
    {"chosen": "a good answer", "rejected": "a bad answer"},
]
#: texts as OpenRLHF sends them: prompt and response decoded, special tokens kept
QUERIES = ["what color is the sky blue", "<s> the cat sat on the mat</s>", "hello world"]
#: the same texts as the posterior takes them (the tokenizer adds <s>, the collator </s>)
PREPARED = ["what color is the sky blue", "the cat sat on the mat", "hello world"]


def fit(kind: str = "llama", **text_options):
    """A float64 tiny Hugging Face reward model and a full last-layer posterior on text."""
    tok = word_tokenizer(kind)
    model = btl.PairwiseRewardModel(tiny_reward_net(kind, tok).double()).eval()
    loader = btl.text_preference_dataloader(ROWS, tok, batch_size=4, **text_options)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full", prior_precision=1.0
    )
    return post, tok


@pytest.fixture(scope="module")
def posterior():
    return fit()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free localhost port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            if not thread.is_alive():
                raise RuntimeError("the server thread died while starting")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def expected(post, texts, **penalty):
    mean, variance = post(texts)
    return penalize(mean, variance, **penalty), mean, variance.sqrt()


def openrlhf_body(texts: list[str]) -> dict:
    """The body OpenRLHF's SingleTurnAgentExecutor posts (openrlhf/utils/agent.py)."""
    n = len(texts)
    return {"query": texts, "prompts": ["what color is the sky"] * n, "labels": [""] * n}


def assert_equal(got: list[float], want: torch.Tensor) -> None:
    """Float64 model and posterior: equal but for the rounding of another batch's padding."""
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- rewards
@pytest.mark.parametrize(
    "penalty",
    [{}, {"k": 2.0}, {"penalty": "kl", "beta": 0.5}, {"penalty": "quantile", "level": 0.1}],
    ids=["std", "std-k2", "kl", "quantile"],
)
def test_rewards_are_the_penalized_posterior_moments(posterior, penalty) -> None:
    with running(serve.create_app(posterior, **penalty)) as url, httpx.Client() as client:
        response = client.post(f"{url}/get_reward", json=openrlhf_body(QUERIES))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"rewards", "scores", "extra_logs"}
    assert set(body["extra_logs"]) == {"reward_mean", "reward_std"}
    # the leading <s> is the one the tokenizer adds, the trailing </s> the one TRL appends
    rewards, mean, std = expected(posterior, PREPARED, **penalty)
    assert_equal(body["rewards"], rewards)
    assert body["scores"] == body["rewards"]
    assert_equal(body["extra_logs"]["reward_mean"], mean)
    assert_equal(body["extra_logs"]["reward_std"], std)


def test_bos_and_eos_are_not_doubled(posterior) -> None:
    collator = posterior.text_collator
    assert collator.collate_items(["<s> hello"])["input_ids"][0, :2].tolist() == [2, 2]  # doubled
    with running(serve.create_app(posterior)) as url, httpx.Client() as client:
        plain, marked = (
            client.post(f"{url}/get_reward", json={"query": [q]}).json()["rewards"]
            for q in ("hello world", "<s> hello world</s>")
        )
    assert plain == marked


def test_bare_server_gives_the_map_reward(posterior) -> None:
    with running(serve.create_app(posterior, bare=True)) as url, httpx.Client() as client:
        body = client.post(f"{url}/get_reward", json=openrlhf_body(QUERIES[:1])).json()
    tokens = posterior.text_collator.collate_items(QUERIES[:1])
    with torch.no_grad():
        reward = posterior.model(tokens).reshape(-1)
    assert body["rewards"] == body["scores"] == body["extra_logs"]["reward_mean"]
    assert "reward_std" not in body["extra_logs"]
    assert body["rewards"] == pytest.approx(reward.tolist(), rel=1e-12)


def test_concurrent_single_requests_are_batched(posterior) -> None:
    texts = ["the cat sat on the mat" + " very" * i for i in range(16)]  # 16 lengths
    app = serve.create_app(posterior, max_wait_ms=200.0)

    async def call_all(url: str) -> list:
        async with httpx.AsyncClient() as client:
            calls = [client.post(f"{url}/get_reward", json=openrlhf_body([t])) for t in texts]
            return await asyncio.gather(*calls)

    with running(app) as url:
        responses = asyncio.run(call_all(url))
        health = httpx.get(f"{url}/health").json()
    assert all(r.status_code == 200 for r in responses)
    assert_equal([r.json()["rewards"][0] for r in responses], expected(posterior, texts)[0])
    batcher = app.state.batcher
    assert batcher.requests == 16 and batcher.items == 16
    assert batcher.batches < 16 and batcher.largest > 1
    assert health["batches"] == batcher.batches and health["mode"] == "posterior"


def test_batches_hold_at_most_max_batch_size_texts(posterior) -> None:
    app = serve.create_app(posterior, max_batch_size=3, max_wait_ms=200.0)

    async def call_all(url: str) -> list:
        async with httpx.AsyncClient() as client:
            calls = [client.post(f"{url}/get_reward", json={"query": ["hello world"] * n})
                     for n in (2, 2, 5, 1)]  # fmt: skip
            return await asyncio.gather(*calls)

    with running(app) as url:
        responses = asyncio.run(call_all(url))
    assert [len(r.json()["rewards"]) for r in responses] == [2, 2, 5, 1]
    assert app.state.batcher.batches >= 3  # 5 texts alone; 2 + 2 > 3


# ---------------------------------------------------------------------------- bad requests
BAD = [
    (b"not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 422, "JSON object"),
    (b"{}", 422, "'query' is missing"),
    (b'{"query": "the cat"}', 422, r"'query' must be a list.*\[text\]"),
    (b'{"query": []}', 422, "'query' is an empty list"),
    (b'{"query": ["the cat", 3]}', 422, "'query' entry 1 must be a string.*int"),
    (b'{"query": [["the cat"]]}', 422, "'query' entry 0 must be a string"),
    (b'{"query": ["a"], "prompts": "a"}', 422, "'prompts' must be a list with one entry per"),
    (b'{"query": ["a"], "prompts": ["a", "b"]}', 422, "'prompts'.*got a list of 2"),
    (b'{"query": ["a"], "prompts": [7]}', 422, "'prompts' entry 0 must be a string"),
    (b'{"query": ["a"], "labels": {"x": 1}}', 422, "'labels' must be a list"),
    (b'{"query": ["a", "b", "c", "d", "e"]}', 422, "5 texts, more than.*max_request_size=4"),
    (b'{"query": ["the cat sat on the mat the cat sat"]}', 422, "'query'.*more than max_length=8"),
]


@pytest.fixture(scope="module")
def short_server() -> Iterator[str]:
    """A server taking at most 4 texts per request, each at most 8 tokens."""
    with running(
        serve.create_app(fit(max_length=8, long_queries="refuse")[0], max_request_size=4)
    ) as url:
        yield url


@pytest.mark.parametrize(("body", "status", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_requests_get_a_json_error_naming_the_field(short_server, body, status, match) -> None:
    url = short_server
    with httpx.Client() as client:
        response = client.post(f"{url}/get_reward", content=body)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert re.search(match, response.json()["error"]), response.json()
        good = client.post(f"{url}/get_reward", json={"query": ["the cat"]})
        assert good.status_code == 200  # the server keeps serving


def test_a_text_without_tokens_is_refused() -> None:
    post = fit("gpt2", append_eos=False)[0]  # adds no bos and no eos: "" has no tokens
    with running(serve.create_app(post)) as url, httpx.Client() as client:
        response = client.post(f"{url}/get_reward", json={"query": ["the cat", "  "]})
        assert response.status_code == 422
        assert re.search(r"'query' entry 1 \('  '\) has no tokens", response.json()["error"])
        assert client.post(f"{url}/get_reward", json={"query": ["the cat"]}).status_code == 200


def test_labels_of_any_json_type_are_accepted(posterior) -> None:
    body = {"query": ["a", "b"], "prompts": [None, "p"], "labels": [{"answer": 1}, None]}
    with running(serve.create_app(posterior)) as url:
        assert httpx.post(f"{url}/get_reward", json=body).status_code == 200


def test_unknown_routes_and_methods_get_json_errors(posterior) -> None:
    with running(serve.create_app(posterior)) as url, httpx.Client() as client:
        missing = client.post(f"{url}/reward", json={"query": ["a"]})
        wrong = client.get(f"{url}/get_reward")
    assert missing.status_code == 404 and "POST /get_reward" in missing.json()["error"]
    assert wrong.status_code == 405 and "GET /get_reward" in wrong.json()["error"]


# ---------------------------------------------------------------------------- failures
def failing_on(post, monkeypatch, word_id: int):
    """Make ``post.predict`` raise for any batch holding the token ``word_id``."""
    predict = post.predict

    def flaky(tokens):
        if bool((tokens["input_ids"] == word_id).any()):
            raise RuntimeError("the model broke")
        return predict(tokens)

    monkeypatch.setattr(post, "predict", flaky)


def test_a_failing_request_gets_500_and_the_server_keeps_serving(monkeypatch) -> None:
    post, tok = fit()
    failing_on(post, monkeypatch, tok.convert_tokens_to_ids("dog"))
    app = serve.create_app(post, max_wait_ms=200.0)

    async def call_all(url: str) -> list:
        async with httpx.AsyncClient() as client:
            texts = ["the dog"] + [f"the cat {'very ' * i}good" for i in range(7)]
            calls = [client.post(f"{url}/get_reward", json={"query": [t]}) for t in texts]
            return await asyncio.gather(*calls)

    with running(app) as url, httpx.Client() as client:
        bad = client.post(f"{url}/get_reward", json={"query": ["the dog sat"]})
        assert bad.status_code == 500
        assert "RuntimeError: the model broke" in bad.json()["error"]
        assert client.post(f"{url}/get_reward", json={"query": ["the cat"]}).status_code == 200
        # in one batch with seven good requests, only the failing one fails
        together = asyncio.run(call_all(url))
    assert [r.status_code for r in together] == [500] + [200] * 7
    assert app.state.batcher.largest == 8


def test_the_event_loop_answers_while_a_batch_runs(monkeypatch) -> None:
    post = fit()[0]
    entered, release = threading.Event(), threading.Event()
    predict = post.predict

    def slow(tokens):
        entered.set()
        release.wait(30)
        return predict(tokens)

    monkeypatch.setattr(post, "predict", slow)
    with running(serve.create_app(post)) as url:
        result: list = []
        caller = threading.Thread(
            target=lambda: result.append(
                httpx.post(f"{url}/get_reward", json={"query": ["a"]}, timeout=60)
            )  # fmt: skip
        )
        caller.start()
        assert entered.wait(30)
        health = httpx.get(f"{url}/health", timeout=10)  # while the batch is still running
        assert health.status_code == 200 and not release.is_set()
        release.set()
        caller.join(60)
    assert result[0].status_code == 200


# ---------------------------------------------------------------------------- set-up errors
def test_create_app_refuses_bad_arguments(posterior) -> None:
    with pytest.raises(TypeError, match="RewardPosterior.*load_reward_posterior"):
        serve.create_app(posterior.model)
    untokenized = fit()[0]
    untokenized.text_collator = None
    with pytest.raises(TypeError, match="no tokenizer.*set_tokenizer"):
        serve.create_app(untokenized)
    with pytest.raises(ValueError, match="needs `beta`"):
        serve.create_app(posterior, penalty="kl")
    with pytest.raises(ValueError, match="`penalty` must be one of"):
        serve.create_app(posterior, penalty="mean")
    with pytest.raises(ValueError, match="`max_batch_size` must be a positive int"):
        serve.create_app(posterior, max_batch_size=0)
    with pytest.raises(ValueError, match="`max_wait_ms` must be >= 0"):
        serve.create_app(posterior, max_wait_ms=-1.0)


def test_command_line_refuses_bad_options_before_loading(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--posterior", "nowhere", "--model", "nowhere", "--penalty", "kl"])
    assert exit_info.value.code == 2
    assert "needs `beta`" in capsys.readouterr().err


def test_command_line_loads_the_saved_folders_with_its_text_options(tmp_path) -> None:
    post, tok = fit("gpt2")
    post.model.net.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    post.save(tmp_path / "posterior")
    folders = ["--posterior", str(tmp_path / "posterior"), "--model", str(tmp_path / "model")]
    args = serve._parser().parse_args(folders + ["--max-length", "6", "--truncation", "left",
                                                 "--no-append-eos", "--device", "cpu"])  # fmt: skip
    app = serve.load_app(args)
    collator = app.state.posterior.text_collator
    assert (collator.max_length, collator.truncation, collator.append_eos) == (6, "left", False)
    long_text = "the cat sat on the mat very good"
    with running(app) as url:
        body = httpx.post(f"{url}/get_reward", json={"query": [long_text]}).json()
    post.set_tokenizer(tok, max_length=6, truncation="left", append_eos=False)
    assert_equal(body["rewards"], expected(post, [long_text])[0])
    # as saved: no limit (so the model's 64 positions), eos appended
    saved = serve.load_app(serve._parser().parse_args(folders)).state.posterior.text_collator
    assert (saved.max_length, saved.truncation, saved.append_eos) == (64, "error", True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_command_line_serves_a_half_precision_model_in_its_dtype(tmp_path, dtype) -> None:
    tok = word_tokenizer("llama")
    net = tiny_reward_net("llama", tok).to(getattr(torch, dtype))
    model = btl.PairwiseRewardModel(net).eval()
    loader = btl.text_preference_dataloader(ROWS, tok, batch_size=4)
    post = btl.fit_reward_posterior(model, loader, subset_of_weights="last_layer")
    net.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    post.save(tmp_path / "posterior")
    folders = ["--posterior", str(tmp_path / "posterior"), "--model", str(tmp_path / "model")]
    app = serve.load_app(serve._parser().parse_args(folders + ["--dtype", dtype]))
    served = app.state.posterior.model
    assert {p.dtype for p in served.parameters()} == {getattr(torch, dtype)}
    with running(app) as url:
        body = httpx.post(f"{url}/get_reward", json={"query": PREPARED}).json()
    want = expected(post, PREPARED)[0].double()
    torch.testing.assert_close(torch.tensor(body["rewards"], dtype=torch.float64), want)


def test_command_line_explains_what_it_cannot_load(tmp_path, capsys) -> None:
    post, tok = fit()
    post.model.net.save_pretrained(tmp_path / "model")  # float64, but rotary buffers float32
    tok.save_pretrained(tmp_path / "model")
    post.save(tmp_path / "posterior")
    folders = ["--posterior", str(tmp_path / "posterior"), "--model", str(tmp_path / "model")]
    with pytest.raises(SystemExit) as exit_info:
        serve.main(folders + ["--device", "cpu"])
    assert exit_info.value.code == 1
    assert re.search("cannot serve .* weights differ.*pass --dtype", capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--posterior", str(tmp_path / "posterior"), "--model", str(tmp_path / "x")])
    assert exit_info.value.code == 1
    assert "cannot serve" in capsys.readouterr().err


def test_import_without_fastapi_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "bt_laplace.serve")
    with pytest.raises(ImportError, match=r'pip install "bt-laplace\[serve\]"'):
        importlib.import_module("bt_laplace.serve")


def run_module(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "bt_laplace.serve", *args],
        capture_output=True, text=True, env=env, timeout=120, **kwargs,
    )  # fmt: skip


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--posterior", "--model", "--tokenizer", "--port", "--k", "--penalty", "--bare",
                   "--max-batch-size", "--max-wait-ms"):  # fmt: skip
        assert option in out


def test_help_shows_the_defaults(capsys) -> None:
    """Every option with a default names it; none prints "(default: None)"."""
    with pytest.raises(SystemExit):
        serve.main(["--help"])
    options = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]
    for option, default in [("--host", "127.0.0.1"), ("--port", "5000"), ("--penalty", "std"),
                            ("--k", "1.0"), ("--max-batch-size", "64"), ("--max-wait-ms", "2.0"),
                            ("--max-request-size", "1024"), ("--dtype", "auto"),
                            ("--log-level", "info")]:  # fmt: skip
        assert re.search(rf"{option} [^-]*\(default: {re.escape(default)}\)", options), option
    assert "(default: None)" not in options and "(default: False)" not in options


@pytest.mark.slow  # importing torch and laplace-torch in a fresh process takes seconds
def test_help_runs_as_a_module() -> None:
    done = run_module("--help")
    assert done.returncode == 0, done.stderr
    assert "--posterior" in done.stdout and "--bare" in done.stdout


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_one_command_serves_a_saved_posterior(tmp_path) -> None:
    post, tok = fit()
    post.model.net.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    post.save(tmp_path / "posterior")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "bt_laplace.serve", "--posterior", str(tmp_path / "posterior"),
               "--model", str(tmp_path / "model"), "--port", str(port), "--dtype", "float64",
               "--device", "cpu", "--penalty", "kl", "--beta", "0.25"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode())  # type: ignore[union-attr]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        response = httpx.post(f"{url}/get_reward", json=openrlhf_body(QUERIES), timeout=60)
        assert response.status_code == 200, response.text
        rewards = expected(post, PREPARED, penalty="kl", beta=0.25)[0]
        assert_equal(response.json()["rewards"], rewards)
    finally:
        process.terminate()
        process.wait(30)


# ---------------------------------------------------------------------------- no lost reward
LONG = " ".join(["the cat sat on the mat"] * 12)  # 72 words: over the model's 64 positions


def test_texts_over_max_length_are_scored_and_counted() -> None:
    post = fit(max_length=8)[0]  # queries over 8 tokens are scored whole, by default
    texts = ["the cat sat on the mat the cat sat", LONG, "hello world"]
    app = serve.create_app(post, log_truncated=True)
    with pytest.warns(btl.BTLaplaceWarning, match=r"1 of [13] query texts.*last 64 tokens"):
        with running(app) as url, httpx.Client() as client:
            response = client.post(f"{url}/get_reward", json=openrlhf_body(texts))
            again = client.post(f"{url}/get_reward", json=openrlhf_body(texts[1:2]))
            health = client.get(f"{url}/health").json()
        want = expected(post, texts)
    assert response.status_code == again.status_code == 200, response.text
    body = response.json()
    assert_equal(body["rewards"], want[0])
    assert set(body["extra_logs"]) == {"reward_mean", "reward_std", "truncated"}
    assert body["extra_logs"]["truncated"] == [0.0, 1.0, 0.0]
    assert (health["truncated"], health["window"]) == (2, 64)
    assert len(post.text_collator.encode_item(texts[0])) > 8  # over max_length, not cut


def test_refused_requests_are_logged_with_their_reason(caplog) -> None:
    post = fit(max_length=8, long_queries="refuse")[0]
    with caplog.at_level("WARNING", logger="bt_laplace.serve"):
        with running(serve.create_app(post)) as url, httpx.Client() as client:
            long = client.post(f"{url}/get_reward", json={"query": ["the cat " * 8]})
            missing = client.post(f"{url}/get_reward", json={"texts": ["a"]})
            unknown = client.get(f"{url}/nowhere")
    assert (long.status_code, missing.status_code, unknown.status_code) == (422, 422, 404)
    refused = [r for r in caplog.records if r.name == "bt_laplace.serve"]
    assert [r.levelname for r in refused] == ["WARNING"] * 3
    assert re.search(r"HTTP 422.*18 tokens, more than max_length=8", refused[0].getMessage())
    assert re.search(r"HTTP 422.*'query' is missing", refused[1].getMessage())
    assert re.search(r"HTTP 404.*GET /nowhere", refused[2].getMessage())


# ---------------------------------------------------------------------------- special tokens
def fit_family(family: str):
    """A posterior of family ``family`` with its tokenizer: "bert" (MiniLM's BERT tokenizer,
    [CLS] ... [SEP], no eos), "gpt2", "llama" (<s> prepended), "chat" (llama with a chat
    template that renders the bos itself)."""
    from conftest import CHAT_TEMPLATE, minilm_tokenizer

    tok = (
        minilm_tokenizer() if family == "bert" else word_tokenizer(family.replace("chat", "llama"))
    )
    if family == "chat":
        tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    kind = family.replace("chat", "llama")
    model = btl.PairwiseRewardModel(tiny_reward_net(kind, tok).double()).eval()
    loader = btl.text_preference_dataloader(ROWS, tok, batch_size=4)
    post = btl.fit_reward_posterior(
        model, loader, subset_of_weights="last_layer", hessian_structure="full", prior_precision=1.0
    )
    return post, tok


def openrlhf_query(tok, text: str) -> str:
    """The query OpenRLHF sends for the sequence ``text`` (prompt and response): its ids with
    the special tokens the tokenizer adds, ending with the eos if the tokenizer has one, decoded
    with skip_special_tokens=False (openrlhf/utils/agent.py)."""
    ids = tok(text)["input_ids"]
    if tok.eos_token_id is not None and ids[-1] != tok.eos_token_id:
        ids.append(tok.eos_token_id)
    return tok.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "chat"])
def test_special_tokens_of_a_decoded_query_are_not_doubled(family: str) -> None:
    post, tok = fit_family(family)
    if family == "chat":
        messages = [{"role": "user", "content": "what color is the sky"}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]  # as OpenRLHF tokenizes it
        ids += tok("blue </s>", add_special_tokens=False)["input_ids"]
        query = tok.decode(ids, skip_special_tokens=False)
        plain: object = [messages + [{"role": "assistant", "content": "blue"}]]
        assert query.startswith("<s> <|user|>")
    else:
        query = openrlhf_query(tok, "what color is the sky blue")
        plain = ["what color is the sky blue"]
    with running(serve.create_app(post)) as url, httpx.Client() as client:
        got = client.post(f"{url}/get_reward", json=openrlhf_body([query])).json()["rewards"]
    assert_equal(got, expected(post, plain)[0])
    if family == "bert":  # before: [CLS] [CLS] ... [SEP] [SEP], another reward
        assert query == "[CLS] what color is the sky blue [SEP]"
        doubled = expected(post, [query])[0]
        assert abs(float(doubled[0]) - got[0]) > 1e-4
