"""The scoring server over real HTTP (httpx) against a real uvicorn server on a free port.

The engine is MoEPrefillEngine over a tiny MoE GPT on this process (prefix KV cache, real
computation); answers are checked against a plain forward of the same model.
"""
import json
import socket
import threading

import pytest

httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install zerolib[dev])")
pytest.importorskip("fastapi", reason="fastapi is not installed (pip install zerolib[serve])")

from support.moe_models import reference_answers  # noqa: E402
from support.serving import (VOCAB, FailingScorer, GatedScorer, ServerThread, one_rank_engine,  # noqa: E402
                             prefix_workload, tiny_moe)
from zerolib.inference.serve.settings import ServeSettings  # noqa: E402


class ByteTokenizer:
    """A real tokenizer for a 64-token vocabulary: one token per byte, modulo the vocabulary."""

    def encode(self, text: str) -> list[int]:
        return [b % VOCAB for b in text.encode()]


@pytest.fixture(scope="module")
def model():
    return tiny_moe()


@pytest.fixture(scope="module")
def server(model):
    settings = ServeSettings(max_requests_per_call=8, max_body_bytes=20_000, max_input_tokens=100, max_candidates=8)
    # a threshold of ~6 requests per round, so that concurrent calls share and split rounds
    scorer = one_rank_engine(tiny_moe())
    scorer.threshold = 6 * 40 * scorer.cost.linear_per_token()
    running = ServerThread(scorer, settings, tokenizer=ByteTokenizer(), max_positions=128)
    yield running
    assert running.close() == 0


def _check_answers(got: list[dict], requests: list[dict], model) -> None:
    for mine, ref in zip(got, reference_answers(model, requests), strict=True):
        assert mine["best"] == ref["best"]
        assert mine["logprobs"] == pytest.approx(ref["logprobs"], abs=1e-5)


def test_many_concurrent_clients_each_get_their_own_answers(server, model):
    calls = [prefix_workload(1 + i % 4, seed=100 + i) for i in range(24)]
    answers, errors = [None] * len(calls), []
    start = threading.Barrier(len(calls))

    def client(i):
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                start.wait()
                reply = http.post("/v1/score", json={"requests": calls[i]})
                reply.raise_for_status()
                answers[i] = reply.json()["results"]
        except Exception as err:  # collected: a failing thread must fail the test
            errors.append(repr(err))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for got, requests in zip(answers, calls):
        _check_answers(got, requests, model)
    metrics = httpx.get(server.url + "/metrics", timeout=60).json()
    assert metrics["rounds"] >= 2 and metrics["tokens_from_cache"] > 0, metrics
    assert metrics["requests_scored"] >= sum(map(len, calls))


def test_text_requests_use_the_tokenizer_and_logits_come_on_request(server, model):
    reply = httpx.post(server.url + "/v1/score", json={"requests": [{"text": "hello there", "candidates": [1, 2]}],
                                                       "return_logits": True}, timeout=60)
    assert reply.status_code == 200, reply.text
    result = reply.json()["results"][0]
    ids = ByteTokenizer().encode("hello there")
    _check_answers([result], [{"input_ids": ids, "candidates": [1, 2]}], model)
    assert len(result["logits"]) == VOCAB
    plain = httpx.post(server.url + "/v1/score", json={"requests": [{"input_ids": ids, "candidates": [1, 2]}]},
                       timeout=60)
    assert "logits" not in plain.json()["results"][0]


def test_a_multi_label_request_is_scored_as_siblings_sharing_its_prompt(server, model):
    prompt = [(5 * i) % VOCAB for i in range(40)]
    labels = [{"input_ids": [1, 2]}, {"input_ids": [3], "candidates": [9, 10]}, {"input_ids": [4, 5, 6]}]
    body = {"requests": [{"input_ids": prompt, "labels": labels, "candidates": [7, 8]},
                         {"input_ids": prompt[:20], "candidates": [9]}]}
    before = httpx.get(server.url + "/metrics", timeout=60).json()["tokens_from_cache"]
    reply = httpx.post(server.url + "/v1/score", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    multi, plain = reply.json()["results"]
    siblings = [{"input_ids": prompt + label["input_ids"], "candidates": label.get("candidates", [7, 8])}
                for label in labels]
    _check_answers(multi["labels"], siblings, model)
    _check_answers([plain], [body["requests"][1]], model)
    after = httpx.get(server.url + "/metrics", timeout=60).json()["tokens_from_cache"]
    assert after - before >= 2 * 32, "the shared prompt's two full blocks are computed once"


BAD_INPUTS = [
    (b'{"requests": [{"input_ids": [1, 2], "candidates": [3]}', 400, "not valid JSON"),
    (json.dumps({"requests": [{"input_ids": [1], "candidates": [3], "label": 1}]}), 422,
     "requests[0].label: unknown field"),
    (json.dumps({"requests": [{"input_ids": [1]}], "stream": True}), 422, "stream: unknown field"),
    (json.dumps({"requests": [{"input_ids": [1] * 101, "candidates": [3]}]}), 422, "longer than the limit of 100"),
    (json.dumps({"requests": [{"input_ids": [1, 2], "candidates": []}]}), 422, "at least 1 candidate"),
    (json.dumps({"requests": [{"input_ids": [1, 2], "candidates": [VOCAB]}]}), 422, "outside the vocabulary"),
    (json.dumps({"requests": [{"input_ids": [-1], "candidates": [1]}]}), 422, "input_ids[0]: token id -1"),
    (json.dumps({"requests": [{"input_ids": [], "candidates": [1]}]}), 422, "input is empty"),
    (json.dumps({"requests": [{"input_ids": [1], "text": "a", "candidates": [1]}]}), 422, "exactly one of"),
    (json.dumps({"requests": [{"input_ids": ["1"], "candidates": [1]}]}), 422, "valid integer"),
    (json.dumps({"requests": []}), 422, "requests"),
    (json.dumps({"requests": [{"input_ids": [1], "candidates": list(range(9))}]}), 422, "limit of 8"),
    (json.dumps({"requests": [{"input_ids": [1], "candidates": [1]}] * 9}), 413, "limit of 8"),
    (json.dumps({"requests": [{"input_ids": [1] * 8000, "candidates": [1]}]}), 413, "max_body_bytes"),
    (json.dumps({"requests": [{"labels": [{"input_ids": [2]}, {}], "candidates": [1]}]}), 422,
     "requests[0].labels[1]: the prompt and this label's suffix are both empty"),
    (json.dumps({"requests": [{"input_ids": [1] * 99, "labels": [{"input_ids": [2, 3]}], "candidates": [1]}]}),
     422, "labels[0]: input is 101 tokens"),
    (json.dumps({"requests": [{"input_ids": [1], "labels": [{"input_ids": [2]}]}]}), 422,
     "requests[0].candidates: missing"),
    (json.dumps({"requests": [{"input_ids": [1], "labels": [{"input_ids": [2], "label": 1}], "candidates": [1]}]}),
     422, "labels[0].label: unknown field (allowed in a label"),
    (json.dumps({"requests": [{"input_ids": [1], "labels": [{"input_ids": [2]}] * 9, "candidates": [1]}]}), 413,
     "labels count one each"),
]


@pytest.mark.parametrize("body,status,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_healthy(server, model, body, status, message):
    reply = httpx.post(server.url + "/v1/score", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"], reply.json()
    assert httpx.get(server.url + "/health", timeout=60).json()["status"] == "ok"
    good = {"input_ids": [5, 6, 7], "candidates": [1, 2]}
    reply = httpx.post(server.url + "/v1/score", json={"requests": [good]}, timeout=60)
    _check_answers(reply.json()["results"], [good], model)


def test_health_and_metrics_report_queue_load_throughput_and_threshold(server):
    health = httpx.get(server.url + "/health", timeout=60).json()
    for key in ("queue_depth", "engine_load_last_round_flops", "throughput_tokens_per_s", "threshold_flops"):
        assert key in health, health
    metrics = httpx.get(server.url + "/metrics", timeout=60).json()
    assert metrics["router"] == "prefix" and metrics["ranks"] == 1 and metrics["threshold_flops"] > 0
    assert len(metrics["engine_load_total_flops"]) == 1 and metrics["t_ep_seconds"] > 0


def _post_and_vanish(url: str, body: dict) -> None:
    """A client that sends a whole valid request and closes its socket without reading."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)


def test_a_client_that_disconnects_loses_no_one_else_s_result_and_a_full_queue_says_503(model):
    gated = GatedScorer(one_rank_engine(tiny_moe()))
    running = ServerThread(gated, ServeSettings(max_queue_requests=3, batch_wait_seconds=0.0))
    try:
        first = prefix_workload(1, seed=7)
        later = prefix_workload(2, seed=8)
        answers = {}
        holder = threading.Thread(target=lambda: answers.update(
            first=httpx.post(running.url + "/v1/score", json={"requests": first}, timeout=60)))
        holder.start()
        assert gated.entered.wait(timeout=30)  # round 1 (first) is in flight, held at the gate
        _post_and_vanish(running.url, {"requests": prefix_workload(1, seed=9)})
        waiter = threading.Thread(target=lambda: answers.update(
            later=httpx.post(running.url + "/v1/score", json={"requests": later}, timeout=60)))
        waiter.start()
        for _ in range(200):  # the vanished client is noticed and its request dropped
            metrics = httpx.get(running.url + "/metrics", timeout=60).json()
            if metrics["cancelled_calls"] == 1 and metrics["queue_depth"] == 2:
                break
            threading.Event().wait(0.05)
        assert metrics["cancelled_calls"] == 1 and metrics["queue_depth"] == 2, metrics
        full = httpx.post(running.url + "/v1/score", json={"requests": prefix_workload(2, seed=10)}, timeout=60)
        assert full.status_code == 503 and "max_queue_requests" in full.json()["error"]
        gated.gate.set()
        holder.join(timeout=60)
        waiter.join(timeout=60)
        _check_answers(answers["first"].json()["results"], first, model)
        _check_answers(answers["later"].json()["results"], later, model)
        scored = httpx.get(running.url + "/metrics", timeout=60).json()["requests_scored"]
        assert scored == 3, "the vanished client's request must never run"
    finally:
        gated.gate.set()
        assert running.close() == 0


def test_a_failing_engine_answers_503_and_ends_the_rank(model):
    failing = FailingScorer(one_rank_engine(tiny_moe()))
    running = ServerThread(failing)
    request = {"requests": prefix_workload(1, seed=11)}
    assert httpx.post(running.url + "/v1/score", json=request, timeout=60).status_code == 200
    failing.broken = True
    reply = httpx.post(running.url + "/v1/score", json=request, timeout=60)
    assert reply.status_code == 503 and "scoring failed: RuntimeError: expert shard lost" in reply.json()["error"]
    running.thread.join(timeout=30)
    assert not running.thread.is_alive(), "the rank must end (ending the job), not carry on out of step"
    assert isinstance(running.error, RuntimeError)
