"""`tempnet serve` on the released checkpoint layout: vLLM's OpenAI server on a loopback port, tempered per request
(completions and chat, streaming too), a bad request key as an HTTP 400, and lm-eval's local-completions client
scoring a local task against it. One server for the module, always stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
import torch

from serving_models import NEEDS_VLLM, ENGINE, PROMPT, SP_VOCAB
from helpers import OFFLINE_ENV, free_port, local_tasks

pytest.importorskip("vllm", reason=NEEDS_VLLM)

START_DEADLINE_S = 600
REQUEST_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(released_dir, tmp_path_factory):
    """(base url, served model name, log path): `tempnet serve CHECKPOINT [vLLM flags]` as a user types it."""
    root = tmp_path_factory.mktemp("server")
    template = root / "chat.jinja"  # the tiny tokenizer has no chat template: the flag goes to vLLM unchanged
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    port = free_port()
    log = root / "server.log"
    cmd = [sys.executable, "-m", "tempnet.cli", "serve", str(released_dir), "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", str(ENGINE["kv_cache_memory_bytes"]),
           "--max-model-len", "128",
           "--logprobs-mode", "processed_logprobs", "--max-logprobs", str(SP_VOCAB), "--chat-template", str(template),
           "--seed", "0"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=OFFLINE_ENV, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:  # ready once vLLM answers /health (it binds the port only after the engine started)
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start in {START_DEADLINE_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url, str(released_dir), log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def released_model(released_dir):
    from tempnet.integrations.hf import LLaMA_TempNet

    return LLaMA_TempNet.from_pretrained(released_dir, dtype=torch.float32).eval()


def _post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/v1/{path}", json=body, timeout=REQUEST_TIMEOUT_S)


def _top_logits(entry: dict) -> dict[int, float]:
    """{token id: processed log-probability} of one position's top_logprobs ("token_id:N" keys)."""
    return {int(k.split(":")[1]): v for k, v in entry.items()}


def _centred(untempered: dict[int, float], tempered: dict[int, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both log-probabilities over the tokens both list, each minus its mean: log_softmax(z / tau) and
    log_softmax(z) differ by a constant per row, so centred they are z / tau and z (centred)."""
    common = sorted(set(untempered) & set(tempered))
    z = torch.tensor([untempered[i] for i in common], dtype=torch.float64)
    s = torch.tensor([tempered[i] for i in common], dtype=torch.float64)
    return z - z.mean(), s - s.mean()


def _ratio(untempered: dict[int, float], tempered: dict[int, float]) -> float:
    """tau with log_softmax(z / tau) tempered and log_softmax(z) untempered (least squares)."""
    z, s = _centred(untempered, tempered)
    return float(z @ z / (z @ s))


def test_served_model_name_is_the_checkpoint_path(server):
    url, name, _ = server
    assert [m["id"] for m in requests.get(f"{url}/v1/models", timeout=REQUEST_TIMEOUT_S).json()["data"]] == [name]


def test_completions_tempered_by_the_released_tempnet(server, released_model, tokenizer):
    """The released layout serves as it is: the first token's logits are divided by the tau that
    LLaMA_TempNet.from_pretrained gives at that position; {"tempnet": false} leaves them untempered."""
    url, name, _ = server
    ids = tokenizer(PROMPT).input_ids
    body = dict(model=name, prompt=ids, max_tokens=1, temperature=1.0, logprobs=20, return_tokens_as_token_ids=True)
    on = _post(url, "completions", body)
    off = _post(url, "completions", {**body, "vllm_xargs": {"tempnet": False}})
    assert on.status_code == 200 and off.status_code == 200, on.text + off.text
    tempered = _top_logits(on.json()["choices"][0]["logprobs"]["top_logprobs"][0])
    untempered = _top_logits(off.json()["choices"][0]["logprobs"]["top_logprobs"][0])
    with torch.no_grad():
        expected = released_model(torch.tensor([ids])).tau[0, -1, 0].item()
    assert _ratio(untempered, tempered) == pytest.approx(expected, abs=1e-4)
    assert expected != pytest.approx(1.0, abs=0.01)


def _stream(url: str, path: str, body: dict) -> list[dict]:
    with requests.post(f"{url}/v1/{path}", json={**body, "stream": True}, stream=True,
                       timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status_code == 200, response.text
        lines = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streaming_completions_and_chat_match_the_whole_answers(server):
    """Greedy answers (tempered: same tokens as untempered, see test_vllm_offline) streamed and not streamed."""
    url, name, _ = server
    body = dict(model=name, prompt=PROMPT, max_tokens=8, temperature=0.0, ignore_eos=True)
    whole = _post(url, "completions", body).json()["choices"][0]["text"]
    assert "".join(c["choices"][0]["text"] for c in _stream(url, "completions", body) if c["choices"]) == whole
    chat = dict(model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0.0,
                ignore_eos=True)
    answer = _post(url, "chat/completions", chat).json()["choices"][0]["message"]["content"]
    chunks = _stream(url, "chat/completions", chat)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == answer
    assert len(answer) > 0


def test_chat_per_request_switch(server):
    """Chat requests are tempered by one tau per position unless {"tempnet": false}."""
    url, name, _ = server
    chat = dict(model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=1, temperature=1.0,
                logprobs=True, top_logprobs=20, return_tokens_as_token_ids=True)

    def first(body) -> dict[int, float]:
        response = _post(url, "chat/completions", body)
        assert response.status_code == 200, response.text
        entry = response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return {int(e["token"].split(":")[1]): e["logprob"] for e in entry}

    tempered, untempered = first(chat), first({**chat, "vllm_xargs": {"tempnet": False}})
    tau = _ratio(untempered, tempered)
    assert 0.01 <= tau <= 1.2 and tau != pytest.approx(1.0, abs=0.01)  # the released tau range
    z, s = _centred(untempered, tempered)
    torch.testing.assert_close(s * tau, z, rtol=1e-5, atol=1e-5)  # one tau for the whole row


def test_unknown_request_key_is_an_http_400(server):
    url, name, _ = server
    response = _post(url, "completions", dict(model=name, prompt=PROMPT, max_tokens=1,
                                              vllm_xargs={"temp_net": False}))
    assert response.status_code == 400
    assert "unknown vllm_xargs key(s) ['temp_net']" in response.text


def test_lm_eval_local_completions_scores_a_local_task(server, released_dir, tmp_path):
    url, name, _ = server
    include = local_tasks(tmp_path / "tasks")
    out = tmp_path / "results"
    args = f"model={name},base_url={url}/v1/completions,tokenizer={released_dir},tokenizer_backend=huggingface," \
           "num_concurrent=1,max_retries=1,max_length=128"
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                           "--tasks", "toy_mc", "--include_path", str(include), "--output_path", str(out),
                           "--log_samples"], env=OFFLINE_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["toy_mc"]
    assert 0.0 <= results["acc,none"] <= 1.0
    samples = [json.loads(line) for f in out.rglob("samples_toy_mc_*.jsonl") for line in f.read_text().splitlines()]
    logliks = [float(r[0][0]) for s in samples for r in s["resps"]]
    assert len(samples) == 4 and len(logliks) == 8 and all(v < 0 for v in logliks)
