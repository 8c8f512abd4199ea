"""The judge server (`selfj serve`): protocol, recovery of instruction and response from OpenRLHF queries,
dynamic batching, equality with in-process scoring, errors, auth, and the engines' own clients (OpenRLHF's
``SingleTurnAgentExecutor``, the verl adapter, TRL's GRPOTrainer with the remote ``SelfJReward``)."""

import asyncio
import http.client
import json
import os
import pickle
import signal
import time
from pathlib import Path

import httpx
import pytest

from selfj_rlhf import SelfJReward, SelfJRewardConfig
from selfj_rlhf.serving.server import (RequestError, ServeConfig, check_bind, create_app, parse_reward_request,
                                       prompt_from_template, split_query, strip_end_markers)
from selfj_rlhf.testing import JudgeBehind, JudgeServerProcess, ServerThread

REPO = Path(__file__).resolve().parents[1]
INSTRUCTIONS = ["What is 2+2?", "What is 2+2?", "Name a colour.", "Name a colour.", "Say hello in French."]
RESPONSES = ["4", "It is five.", "blue", "A colour is a property of light; blue is one.", "Bonjour !"]


def chat_prompt(tokenizer, instruction: str) -> str:
    """The templated prompt an engine sends: the policy's chat template with its generation prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                         add_generation_prompt=True)


@pytest.fixture(scope="module")
def server(tiny_judge):
    with ServerThread(create_app(tiny_judge, SelfJRewardConfig(judge="tiny"), ServeConfig(max_wait_ms=20))) as url:
        yield url


def post(url, body, **kwargs):
    return httpx.post(url + "/get_reward", json=body, timeout=60, **kwargs)


def sleep_for(seconds):
    return lambda: time.sleep(seconds)


def raise_error(message):
    def fail():
        raise RuntimeError(message)
    return fail


# ----------------------------------------------------------------------------- parsing
def test_split_query_exact_and_left_truncated():
    prompt = "<|im_start|>user\n" + "long context " * 20 + "question?<|im_end|>\n<|im_start|>assistant\n"
    assert split_query(prompt + "the answer<|im_end|>", prompt) == "the answer<|im_end|>"
    truncated = prompt[37:]  # the engine kept only the prompt's tail
    assert split_query(truncated + "the answer", prompt) == "the answer"
    with pytest.raises(ValueError, match="does not start with its prompt"):
        split_query("something else entirely", prompt)


def test_prompt_from_template_formats(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    templated = chat_prompt(tokenizer, "Name a colour.")
    assert "<|im_start|>system" in templated  # SmolLM2 adds a default system turn, which is dropped
    assert prompt_from_template(templated) == "Name a colour."
    llama3 = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt_from_template(llama3) == "Name a colour."
    assert prompt_from_template("<s>[INST] Name a colour. [/INST]") == "Name a colour."
    gemma = "<bos><start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    assert prompt_from_template(gemma) == "Name a colour."
    multi = ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
             "<|im_start|>user\nCount to 3.<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_from_template(multi) == "User: Hi\n\nAssistant: Hello!\n\nUser: Count to 3."
    assert prompt_from_template("<s>Plain prompt</s>", ("<s>", "</s>")) == "Plain prompt"


def test_strip_end_markers_keeps_text():
    assert strip_end_markers("blue<|im_end|>") == "blue"
    assert strip_end_markers("blue<|eot_id|><|end_of_text|><pad><pad>") == "blue"
    assert strip_end_markers("a <|im_end|> inside stays<|im_end|>\n") == "a <|im_end|> inside stays"
    assert strip_end_markers("no marker  ") == "no marker  "


@pytest.mark.parametrize("body, field", [
    ([1, 2], "JSON object"),
    ({"prompts": ["a"]}, "'query'"),
    ({"query": "a", "prompts": ["a"]}, "'query' must be a list"),
    ({"query": ["a", "b"], "prompts": ["a"]}, "'prompts' has 1 items"),
    ({"query": ["a", 3], "prompts": ["a", "b"]}, "'query[1]'"),
    ({"query": ["a"]}, "'prompts' is required"),
    ({"query": ["xyz"], "prompts": ["abc"]}, "'query[0]' does not start with its prompt"),
    ({"query": ["ab"], "prompts": ["a"], "labels": ["r", "s"]}, "'labels'"),
    ({"query": ["ab"], "prompts": ["a"], "use_reference": True}, "'labels[0]'"),
    ({"query": ["ab"], "prompts": ["a"], "use_reference": "yes"}, "'use_reference'"),
    ({"prompt": 1, "response": "x"}, "'prompt' and 'response'"),
])
def test_malformed_requests_name_the_field(body, field):
    with pytest.raises(RequestError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_reward_request(body, use_reference=False)


def test_request_forms():
    items, single = parse_reward_request({"query": ["Q: hi A: yo"], "prompts": ["Q: hi A: "], "labels": ["ref"],
                                          "use_reference": True}, use_reference=False)
    assert not single and (items[0].instruction, items[0].response, items[0].reference) == ("Q: hi A:", "yo", "ref")
    items, single = parse_reward_request({"prompt": "hi", "response": "yo"}, use_reference=False)
    assert single and items[0].response == "yo"
    items, _ = parse_reward_request({"prompts": ["hi"], "responses": ["raw<|im_end|>"]}, use_reference=False)
    assert items[0].response == "raw"


# ----------------------------------------------------------------------------- the server
def test_health_routes(server):
    for route in ("/health", "/health/"):
        answer = httpx.get(server + route).json()
        assert answer["status"] == "ok" and answer["judge"] == "tiny" and answer["device"] == "cpu"
        assert answer["template"] and answer["length_control"] is False  # a zero-shot judge has no length fit


def test_openrlhf_protocol_and_equality(server, tiny_judge):
    tokenizer = tiny_judge.tokenizer
    prompts = [chat_prompt(tokenizer, i) for i in INSTRUCTIONS]
    queries = [p + r + "<|im_end|>" for p, r in zip(prompts, RESPONSES)]
    answer = post(server, {"query": queries, "prompts": prompts, "labels": [""] * len(prompts)}).json()
    expected = tiny_judge.score(INSTRUCTIONS, RESPONSES)
    assert answer["extra_logs"]["expected_digit"] == pytest.approx(expected, abs=1e-5)
    assert answer["scores"] == pytest.approx([e / 9 for e in expected], abs=1e-5)
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5)  # raw transform, no length penalty
    assert all(0 <= s <= 1 for s in answer["scores"])
    for name, values in answer["extra_logs"].items():
        assert len(values) == len(queries) and all(isinstance(v, float) for v in values), name


def test_one_per_request_and_concurrent_equal_in_process(server, tiny_judge):
    items = [(f"Question {i % 7}: what is {i}?", f"It is {i}, " + "really " * (i % 5)) for i in range(40)]
    expected = tiny_judge.score([i for i, _ in items], [r for _, r in items])
    one_by_one = [post(server, {"prompts": [i], "responses": [r]}).json()["extra_logs"]["expected_digit"][0]
                  for i, r in items[:8]]
    assert one_by_one == pytest.approx(expected[:8], abs=1e-5)

    async def concurrent():
        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(*(client.post(server + "/get_reward", json={"prompts": [i], "responses": [r]})
                                             for i, r in items))
        return [a.json()["extra_logs"]["expected_digit"][0] for a in answers]

    before = httpx.get(server + "/metrics", params={"format": "json"}).json()
    assert asyncio.run(concurrent()) == pytest.approx(expected, abs=1e-5)
    after = httpx.get(server + "/metrics", params={"format": "json"}).json()
    batches = after["selfj_batch_size_count"] - before["selfj_batch_size_count"]
    scored = after["selfj_batch_size_sum"] - before["selfj_batch_size_sum"]
    assert scored == 40 and batches < 40  # concurrent requests were coalesced
    assert "selfj_queue_wait_seconds_count" in after and "selfj_score_seconds_sum" in after
    assert b"selfj_batch_size_bucket" in httpx.get(server + "/metrics").content  # Prometheus text


def test_empty_and_slime_and_malformed(server, tiny_judge):
    empty = post(server, {"query": [], "prompts": [], "labels": []})
    assert empty.status_code == 200 and empty.json() == {"rewards": [], "scores": [], "extra_logs": {
        "expected_digit": [], "digit_mass": [], "truncated": [], "response_tokens": []}}
    slime = post(server, {"prompt": "Name a colour.", "response": "blue", "label": None}).json()
    assert slime["reward"] == pytest.approx(tiny_judge.score(["Name a colour."], ["blue"])[0], abs=1e-5)
    bad = post(server, {"query": ["a", "b"], "prompts": ["a"]})
    assert bad.status_code == 400 and "'prompts'" in bad.json()["error"] and "\n" not in bad.json()["error"]
    not_json = httpx.post(server + "/get_reward", content=b"{nope", timeout=30)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]


def test_overload_and_timeout(tiny_judge):
    config = ServeConfig(max_queue=2, request_timeout_s=0.2)
    slow_judge = JudgeBehind(tiny_judge, sleep_for(0.5))
    with ServerThread(create_app(slow_judge, SelfJRewardConfig(judge="tiny"), config)) as url:
        full = post(url, {"prompts": ["a", "b", "c"], "responses": ["x", "y", "z"]})
        assert full.status_code == 503 and "overloaded" in full.json()["error"]
        slow = post(url, {"prompts": ["a"], "responses": ["x"]})
        assert slow.status_code == 504
        time.sleep(0.6)
        metrics = httpx.get(url + "/metrics", params={"format": "json"}).json()
        assert metrics['selfj_requests_total{status="503"}'] == 1 and metrics['selfj_requests_total{status="504"}'] == 1


def test_abuse_is_answered_without_exception_text(tiny_judge, caplog):
    """Too large bodies get 413 (also without a Content-Length), JSON nested too deep and long runs of spaces get
    an ordinary answer, a judge failure answers 500 with an id to find in the log and none of the exception's
    text, and an overloaded queue answers 503 with Retry-After."""

    small_bodies = ServeConfig(max_body_bytes=4096)
    with ServerThread(create_app(tiny_judge, SelfJRewardConfig(judge="tiny"), small_bodies)) as url:
        big = httpx.post(url + "/get_reward", content=b"x" * 5000, timeout=30)
        assert big.status_code == 413 and "max_body_bytes" in big.json()["error"]

        def chunks():  # no Content-Length: the limit applies while the body streams in
            for _ in range(10):
                yield b"y" * 1000

        streamed = httpx.post(url + "/get_reward", content=chunks(), timeout=30)
        assert streamed.status_code == 413
        nested = httpx.post(url + "/get_reward", content=b"[" * 2000 + b"]" * 2000, timeout=30)
        assert nested.status_code == 400
        spaces = post(url, {"prompts": ["a" + " " * 1000], "responses": [" " * 2000 + "x" + " " * 1000]})
        assert spaces.status_code == 200
        assert httpx.get(url + "/health", timeout=10).status_code == 200
    with ServerThread(create_app(JudgeBehind(tiny_judge, raise_error("secret internal detail /srv/models/weights.bin")),
                                 SelfJRewardConfig(judge="tiny"), ServeConfig())) as url:
        with caplog.at_level("ERROR", logger="selfj_rlhf.serving.server"):
            failed = post(url, {"prompts": ["a"], "responses": ["x"]})
        assert failed.status_code == 500
        answer = failed.json()
        assert "secret" not in failed.text and "RuntimeError" not in failed.text and answer["error_id"] in answer["error"]
        assert answer["error_id"] in caplog.text and "secret internal detail" in caplog.text


def test_overload_says_when_to_retry(tiny_judge):
    with ServerThread(create_app(JudgeBehind(tiny_judge, sleep_for(0.3)), SelfJRewardConfig(judge="tiny"),
                                 ServeConfig(max_queue=2))) as url:
        full = post(url, {"prompts": ["a", "b", "c"], "responses": ["x", "y", "z"]})
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1


@pytest.mark.parametrize("transform", ["centered", "zscore"])
def test_a_server_refuses_transforms_over_one_request(tiny_judge, transform):
    from selfj_rlhf.core.errors import ConfigError

    with pytest.raises(ConfigError, match="one sample per request.*trainer"):
        create_app(tiny_judge, SelfJRewardConfig(judge="tiny", transform=transform), ServeConfig())


def test_query_parsing_is_linear():
    """Recovering the response must not be quadratic in what an engine (or an attacker) sends: these inputs take
    minutes with the earlier regexes and a rescanning suffix search (evals/server_abuse.py times them)."""
    prompt = "x" + "p" * 50_000
    assert split_query("p" * 49_999 + "q" * 50_000, prompt) == "q" * 50_000  # the longest suffix, not "p" * 64
    with pytest.raises(ValueError):
        split_query("pq" * 50_000, prompt)
    assert strip_end_markers(" " * 200_000 + "x") == " " * 200_000 + "x"
    assert strip_end_markers("x" + " <pad>" * 50_000) == "x"
    assert prompt_from_template("[INST]" * 50_000) == "[INST]" * 50_000


def test_api_key(tiny_judge):
    config = ServeConfig(api_key="s3cret")
    with ServerThread(create_app(tiny_judge, SelfJRewardConfig(judge="tiny"), config)) as url:
        body = {"prompts": ["a"], "responses": ["x"]}
        assert post(url, body).status_code == 401
        assert post(url, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401
        assert post(url, body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        remote = SelfJReward(judge_server_url=url, server_api_key="s3cret")
        assert remote(["a"], ["x"]) == pytest.approx(tiny_judge.score(["a"], ["x"]), abs=1e-5)
    assert check_bind(ServeConfig(host="0.0.0.0")).startswith("warning: binding 0.0.0.0 without --api_key")
    assert check_bind(ServeConfig(host="0.0.0.0", api_key="k")) is None and check_bind(ServeConfig()) is None


# ----------------------------------------------------------------------------- the engines' clients
def test_openrlhf_client(server, tiny_judge):
    agent = pytest.importorskip("openrlhf.utils.agent", reason="openrlhf (installed --no-deps by the dev install)")
    import torch

    tokenizer = tiny_judge.tokenizer
    prompts = [chat_prompt(tokenizer, i) for i in INSTRUCTIONS]
    queries = [p + r + "<|im_end|>" for p, r in zip(prompts, RESPONSES)]
    expected = tiny_judge.score(INSTRUCTIONS, RESPONSES)
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=server + "/get_reward")
    answers = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, [""] * len(queries)))
    assert [r for a in answers for r in a["rewards"]] == pytest.approx(expected, abs=1e-5)
    # one sample per call, as its rollouts send them, over a 2-URL list (both this server)
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[server + "/get_reward", server + "/get_reward"])
    for query, prompt, want in zip(queries, prompts, expected):
        (answer,) = asyncio.run(executor._fetch_rewards_via_http([query], [prompt], [""]))
        assert answer["rewards"] == pytest.approx([want], abs=1e-5)
        # its samples generator turns every extra_logs value into torch.tensor([value])
        info = {key: torch.tensor([value]) for key, value in answer["extra_logs"].items()}
        assert all(t.dtype.is_floating_point and t.numel() == 1 for t in info.values())
    # older OpenRLHF shards a 1-query batch over 2 URLs and sends the second an empty request
    assert post(server, {"query": [], "prompts": [], "labels": []}).status_code == 200


def test_verl_adapter(server, tiny_judge):
    from selfj_rlhf.integrations.verl import compute_score

    result = asyncio.run(compute_score(data_source="alpaca", solution_str="blue", ground_truth="red",
                                       extra_info={"question": "Name a colour.", "index": 3}, judge_url=server,
                                       reward_router_address=None))
    assert result["score"] == pytest.approx(tiny_judge.score(["Name a colour."], ["blue"])[0], abs=1e-5)
    assert set(result) >= {"score", "selfj_expected_digit", "selfj_digit_mass"}
    with_ref = asyncio.run(compute_score(None, "blue", "red", {"prompt": [{"role": "user", "content": "Name a colour."}]},
                                         judge_url=server, prompt_key="prompt", use_reference=True))
    assert with_ref["score"] == pytest.approx(tiny_judge.score(["Name a colour."], ["blue"], ["red"])[0], abs=1e-5)
    with pytest.raises(KeyError, match="extra_info has no 'question'"):
        asyncio.run(compute_score(None, "blue", None, {}, judge_url=server))


@pytest.mark.parametrize("by", ["package", "file"])
def test_verl_reward_manager_runs_adapter(server, tiny_judge, by):
    """verl's own path: its config loader imports the adapter (as the documented ``pkg://`` module, or by file path)
    and its NaiveRewardManager.run_single scores one rollout through it (verl is installed --no-deps by the dev
    install; skipped where it is absent)."""
    naive = pytest.importorskip("verl.experimental.reward_loop.reward_manager.naive", reason="verl not installed")
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import selfj_rlhf.integrations.verl as adapter

    path = "pkg://selfj_rlhf.integrations.verl" if by == "package" else adapter.__file__
    config = OmegaConf.create({"reward": {"custom_reward_function": {
        "path": path, "name": "compute_score", "reward_kwargs": {"judge_url": server}}}})
    compute_score = get_custom_reward_fn(config)
    manager = naive.NaiveRewardManager(config, tiny_judge.tokenizer, compute_score)
    assert manager.is_async_reward_score
    response_ids = tiny_judge.tokenizer.encode("blue", add_special_tokens=False)
    padded = response_ids + [tiny_judge.tokenizer.pad_token_id] * 3
    data = DataProto.from_dict(
        tensors={"responses": torch.tensor([padded]),
                 "attention_mask": torch.tensor([[1] * 4 + [1] * len(response_ids) + [0] * 3])},
        non_tensors={"data_source": np.array(["alpaca"], dtype=object),
                     "reward_model": np.array([{"ground_truth": "red"}], dtype=object),
                     "extra_info": np.array([{"question": "Name a colour."}], dtype=object)})
    result = manager.loop.run_until_complete(manager.run_single(data))  # the loop verl bound the manager to
    assert result["reward_score"] == pytest.approx(tiny_judge.score(["Name a colour."], ["blue"])[0], abs=1e-5)
    assert "selfj_expected_digit" in result["reward_extra_info"]


def test_remote_reward_matches_in_process_and_pickles(server, tiny_judge):
    prompts = [[{"role": "user", "content": i}] for i in INSTRUCTIONS]
    remote = SelfJReward(judge_server_url=server, transform="centered", length_penalty=0.5)
    local = SelfJReward(judge_instance=tiny_judge, transform="centered", length_penalty=0.5)
    assert remote(prompts, RESPONSES) == pytest.approx(local(prompts, RESPONSES), abs=1e-5)
    assert asyncio.run(remote.acall(prompts, RESPONSES)) == pytest.approx(local(prompts, RESPONSES), abs=1e-5)
    with_ref = SelfJReward(judge_server_url=server, use_reference=True)
    refs = ["4", "4", "", "red", "Bonjour"]
    assert with_ref(INSTRUCTIONS, RESPONSES, reference=refs) == pytest.approx(
        SelfJReward(judge_instance=tiny_judge, use_reference=True)(INSTRUCTIONS, RESPONSES, reference=refs), abs=1e-5)
    clone = pickle.loads(pickle.dumps(remote))
    assert clone.__name__ == "selfj" and clone(prompts, RESPONSES) == pytest.approx(remote(prompts, RESPONSES))


def test_grpo_two_steps_with_remote_reward(server, tiny_model_dir, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from selfj_rlhf.rlhf.reward import AsyncSelfJReward

    rows = {"prompt": [[{"role": "user", "content": q}] for q in INSTRUCTIONS[1:]]}
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, learning_rate=1e-3, report_to="none",
                      use_cpu=True, logging_steps=1, save_strategy="no", bf16=False)
    rewards = [SelfJReward(judge_server_url=server), AsyncSelfJReward(judge_server_url=server)]
    rewards[1].__name__ = "selfj_async"
    trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=rewards, args=args,
                          train_dataset=Dataset.from_dict(rows))
    trainer.train()
    logged = [e for e in trainer.state.log_history if "rewards/selfj/mean" in e]
    assert len(logged) == 2 and all(0 <= e["rewards/selfj/mean"] <= 9 for e in logged)
    assert all(e["rewards/selfj/mean"] == pytest.approx(e["rewards/selfj_async/mean"], abs=1e-5) for e in logged)


def test_client_failures_are_errors_the_engine_sees(tiny_judge):
    """The client retries 503 with a jittered pause of at least the server's Retry-After, stops at its deadline,
    and raises on a judge failure: a failed reward never becomes a number."""
    import random

    from selfj_rlhf.serving.client import JudgeClient, JudgeServerError, _pause

    random.seed(0)
    pauses = [_pause(2) for _ in range(200)]
    assert 2 <= min(pauses) < max(pauses) <= 4 and len(set(pauses)) == 200  # jittered within [2, 4] s
    assert _pause(0, retry_after=5.0) == 5.0

    config = ServeConfig(max_queue=1)
    slow_judge = JudgeBehind(tiny_judge, sleep_for(1.0))
    with ServerThread(create_app(slow_judge, SelfJRewardConfig(judge="tiny"), config)) as url:
        client = JudgeClient(url, max_retries=10, deadline_s=1.5)
        started = time.monotonic()
        with pytest.raises(JudgeServerError, match="deadline"):
            client.score(["a", "b"], ["x", "y"])  # two items never fit a queue of one: 503 until the deadline
        assert time.monotonic() - started < 3
        remote = SelfJReward(judge_server_url=url, server_deadline_s=30)
        assert remote(["a"], ["x"]) == pytest.approx(tiny_judge.score(["a"], ["x"]), abs=1e-5)

    with ServerThread(create_app(JudgeBehind(tiny_judge, raise_error("out of memory")), SelfJRewardConfig(judge="tiny"),
                                 ServeConfig())) as url:
        with pytest.raises(JudgeServerError, match="500.*error_id"):
            SelfJReward(judge_server_url=url)(["a"], ["x"])


# ----------------------------------------------------------------------------- the command, restart, load
def test_cli_server_restart_and_sigterm(tiny_model_dir, tiny_judge):
    """`selfj serve` as users start it: SIGTERM lets the request in flight finish and ends the server with status 0,
    and a client keeps its rewards across the restart (it retries refused connections)."""
    server = JudgeServerProcess(str(tiny_model_dir), env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    server.start()
    try:
        remote = SelfJReward(judge_server_url=server.url, server_max_retries=8)
        expected = tiny_judge.score(INSTRUCTIONS, RESPONSES)
        assert remote(INSTRUCTIONS, RESPONSES) == pytest.approx(expected, abs=1e-5)
        # SIGTERM while a request is in flight: it is answered in full, then the server exits with status 0
        body = json.dumps({"prompts": ["Summarise this."] * 256,
                           "responses": [f"Item {i}: " + "a long answer " * 150 for i in range(256)]})
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.request("POST", "/get_reward", body, {"Content-Type": "application/json"})  # sent, not read
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        answer = connection.getresponse()
        assert answer.status == 200 and len(json.loads(answer.read())["rewards"]) == 256
        assert server.proc.wait(timeout=60) == 0
        server.start()  # on the same port; the client retries until the new server is up
        assert remote(INSTRUCTIONS, RESPONSES) == pytest.approx(expected, abs=1e-5)
    finally:
        server.stop()


def test_load_1000_requests(server, tiny_judge):
    """1,000 one-sample requests from 32 concurrent clients, malformed bodies mixed in: every reward arrives once,
    for its own item."""
    from evals.bench_server import load_test

    result = load_test(server, tiny_judge, requests=1000, concurrency=32, malformed_every=10, seed=0)
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["misordered"] == 0, result
    assert result["malformed_rejected"] == 100 and result["server_errors"] == 0


@pytest.mark.integration
def test_embedded_judge_server(tmp_path):
    """The shipped judge of the embedded model behind `selfj serve`, equal to in-process scoring."""
    from selfj_rlhf import SelfJudge
    from selfj_rlhf.judge.directory import default_judge_for
    from selfj_rlhf.core.models import DEFAULT_POLICY

    judge_name = default_judge_for(DEFAULT_POLICY)
    server = JudgeServerProcess(judge_name)
    server.start()
    try:
        assert httpx.get(server.url + "/health").json()["judge"] == judge_name
        answer = post(server.url, {"prompts": INSTRUCTIONS[:3], "responses": RESPONSES[:3]}).json()
    finally:
        assert server.stop()
    # the server scores as every path does: with the library's length-control default
    local = SelfJudge.from_pretrained(judge_name, device="cpu")
    assert answer["extra_logs"]["expected_digit"] == pytest.approx(local.score(INSTRUCTIONS[:3], RESPONSES[:3]),
                                                                   abs=1e-5)
    assert json.dumps(answer)


# ----------------------------------------------------------------------------- batching against a GPU-like judge
def test_server_keeps_up_with_a_simulated_device_judge(smol_tokenizer_dir):
    """64 one-sample clients in another process against a judge that costs like a GPU (each device call 0.2 s + 1 ms
    per item, one call at a time, part of it holding the GIL): the server, with the judge batch size left at its
    default, must put a whole coalesced batch into one device call (mean batch >= 28 of 32) and reach 90 % of the
    judge's own throughput on the same items in calls of 32. 32 clients are measured beside it (reported)."""
    from transformers import AutoTokenizer

    from selfj_rlhf.testing import SimulatedDeviceJudge, one_sample_clients

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    items = [(f"Question {i % 24}: explain item {i}.", f"Answer {i}: " + "words " * (i % 17)) for i in range(512)]
    measured = {}
    for clients in (32, 64):
        judge = SimulatedDeviceJudge(tokenizer, latency_s=0.2, per_item_s=0.001)
        in_process = len(items) / (len(items) / 32 * judge.forward_seconds(32))  # the same items in calls of 32
        with ServerThread(create_app(judge, SelfJRewardConfig(judge="simulated"),
                                     ServeConfig(max_batch_size=32, max_wait_ms=5))) as url:
            served = one_sample_clients(url, items, concurrency=clients)
            metrics = httpx.get(url + "/metrics?format=json", timeout=10).json()
        measured[clients] = {"share_of_in_process": served["items_per_s"] / in_process,
                             "mean_batch": metrics["selfj_batch_size_sum"] / metrics["selfj_batch_size_count"],
                             "device_calls": len(judge.forward_sizes)}
        # one device call per coalesced batch: the server does not split it into the judge's in-process batch size
        assert len(judge.forward_sizes) == metrics["selfj_batch_size_count"], measured
    print(measured)
    assert measured[64]["mean_batch"] >= 28, measured
    assert measured[64]["share_of_in_process"] >= 0.9, measured


def test_an_explicit_judge_batch_size_splits_the_served_batch_even_at_the_in_process_default(smol_tokenizer_dir):
    """``judge_batch_size`` unset: one device call per coalesced batch; set, even to 8 (the in-process default), the
    server runs forwards of that size, as the user asked."""
    from transformers import AutoTokenizer

    from selfj_rlhf.judge.options import DEFAULT_JUDGE_BATCH_SIZE
    from selfj_rlhf.testing import SimulatedDeviceJudge

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    body = {"prompts": [f"Question {i}?" for i in range(24)], "responses": [f"Answer {i}." for i in range(24)]}
    sizes = {}
    for batch_size in (None, DEFAULT_JUDGE_BATCH_SIZE):
        judge = SimulatedDeviceJudge(tokenizer, latency_s=0.0, per_item_s=0.0)
        with ServerThread(create_app(judge, SelfJRewardConfig(judge="simulated", judge_batch_size=batch_size),
                                     ServeConfig(max_batch_size=32, max_wait_ms=5))) as url:
            assert len(post(url, body).json()["rewards"]) == 24
        sizes[batch_size] = judge.forward_sizes
    assert sizes[None] == [24] and sizes[DEFAULT_JUDGE_BATCH_SIZE] == [8, 8, 8]
