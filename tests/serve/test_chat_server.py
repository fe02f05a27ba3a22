"""distill-serve-teacher with the real SmolLM2-135M-Instruct on loopback: both chat APIs equal
``generate``, usage equals the tokenizer's, log-probs equal the model's, and every refusal (queue
full, malformed or oversized request, bad ids) leaves the server answering the next request."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

from distill.serve.cli import load_app, resolve_model
from distill.serve.errors import ServeLimits
from distill.serve.http import serve

PRESET = "preset:smollm2-135m-instruct"
NEW = 12  # few new tokens, greedy: the file stays quick on 2 cores
try:
    import gguf  # noqa: F401  (the GGUF converter: the models extra)
except ImportError:
    pytest.skip("the SmolLM2 preset needs the models extra", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    try:
        resolve_model(PRESET)
    except Exception as e:  # noqa: BLE001 - no wheel and no cache: skip, not fail
        pytest.skip(f"SmolLM2 is not available here: {e}")
    app = load_app(PRESET, limits=ServeLimits(max_queue=2, max_batch=4, max_tokens=64, max_prompt_tokens=512,
                                              max_request_tokens=1024, max_prompts=8, max_body_bytes=20_000))
    srv = serve(app, port=0)
    yield srv
    srv.shutdown()


def post(srv, path, body, raw: bytes | None = None, headers=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{srv.server_port}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def reference(app, messages):
    """What ``generate`` answers on its own: greedy, stopped at end-of-turn."""
    ids = torch.tensor([app.chat.encode(messages)])
    out = app.chat.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  eos_token_id=app.chat.stop_ids, pad_token_id=app.chat.pad_id)
    new = out[0, ids.shape[1]:].tolist()
    if any(t in app.chat.stop_ids for t in new):
        new = new[:next(i for i, t in enumerate(new) if t in app.chat.stop_ids) + 1]
    text = app.chat.tokenizer.decode([t for t in new if t not in app.chat.stop_ids], skip_special_tokens=True)
    return ids[0].tolist(), new, text


MSG = [{"role": "user", "content": "Write a Python function that adds two numbers."}]


def test_both_endpoints_answer_greedy_like_generate_with_the_tokenizers_usage(server):
    app = server.app
    prompt, new, text = reference(app, [{"role": "system", "content": "Be brief."}] + MSG)
    s, oa, _ = post(server, "/v1/chat/completions", {"model": app.name, "max_tokens": NEW, "temperature": 0,
                                                     "messages": [{"role": "system", "content": "Be brief."}] + MSG})
    assert s == 200 and oa["choices"][0]["message"]["content"] == text
    assert oa["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(new),
                           "total_tokens": len(prompt) + len(new)}
    s, an, _ = post(server, "/v1/messages", {"model": app.name, "max_tokens": NEW, "temperature": 0,
                                             "system": [{"type": "text", "text": "Be brief.",
                                                         "cache_control": {"type": "ephemeral"}}], "messages": MSG})
    assert s == 200 and an["content"][0]["text"] == text
    assert an["usage"]["input_tokens"] == len(prompt) and an["usage"]["output_tokens"] == len(new)
    assert an["stop_reason"] == ("end_turn" if new[-1] in app.chat.stop_ids else "max_tokens")


def test_openai_logprobs_equal_the_models_log_softmax(server):
    app = server.app
    prompt, new, _ = reference(app, MSG)
    s, oa, _ = post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": NEW, "temperature": 0,
                                                     "logprobs": True, "top_logprobs": 3})
    assert s == 200
    content = oa["choices"][0]["logprobs"]["content"]
    body = [t for t in new if t not in app.chat.stop_ids]
    assert len(content) == len(body)
    with torch.no_grad():
        lp = torch.log_softmax(app.chat.model(torch.tensor([prompt + body])).logits[0].float(), -1)
    for n, (tok, entry) in enumerate(zip(body, content)):
        row = lp[len(prompt) - 1 + n]
        assert entry["logprob"] == pytest.approx(float(row[tok]), abs=1e-4)
        top = row.topk(3)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_a_full_queue_gets_429_with_retry_after_then_the_server_recovers(server):
    app = server.app
    app.batcher.pause()
    results = {}

    def ask(i):
        results[i] = post(server, "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 4, "temperature": 0})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while len(app.batcher.queue) < 2:
        threading.Event().wait(0.01)
    s, err, hdr = post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 4})
    assert s == 429 and "--max-queue" in err["error"]["message"] and float(hdr["retry-after"]) > 0
    app.batcher.resume()
    for t in threads:
        t.join()
    assert all(results[i][0] == 200 for i in range(2))
    assert app.batcher.batch_sizes[-1] == 2  # the two queued requests went through one generate
    assert post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 4})[0] == 200


def test_concurrent_requests_come_back_correct_and_in_order(server):
    app = server.app
    asks = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(2)]
    want = [reference(app, m)[2] for m in asks]
    got = {}
    app.batcher.pause()

    def ask(i):
        got[i] = post(server, "/v1/chat/completions", {"messages": asks[i], "max_tokens": NEW, "temperature": 0})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while len(app.batcher.queue) < 2:
        threading.Event().wait(0.01)
    app.batcher.resume()
    for t in threads:
        t.join()
    assert [got[i][1]["choices"][0]["message"]["content"] for i in range(2)] == want


@pytest.mark.parametrize("path,body,raw,status,needle", [
    ("/v1/chat/completions", None, b'{"messages": [', 400, "not valid JSON"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokns": 5}, None, 400, "max_tokns"),
    ("/v1/chat/completions", {"messages": MSG, "max_tokens": 10_000}, None, 400, "--max-new-tokens"),
    ("/v1/messages", {"messages": MSG}, None, 400, "max_tokens: field required"),
    ("/v1/messages", {"messages": [{"role": "user", "content": "x " * 900}], "max_tokens": 4}, None, 413,
     "the limit is 512"),
    ("/v1/chat/completions", None, b'{"x": "' + b"a" * 30_000 + b'"}', 413, "--max-body-bytes"),
    ("/v1/completions", {"prompt": [[1, -3, 2]], "prompt_logprobs": 2}, None, 400, "token id -3"),
    ("/v1/completions", {"prompt": [[1, 10**6]], "prompt_logprobs": 2}, None, 400, "token id 1000000"),
    ("/v1/completions", {"prompt": [[1] * 600], "prompt_logprobs": 2}, None, 413, "--max-prompt-tokens"),
    ("/v1/completions", {"prompt": [[1] * 400] * 3, "prompt_logprobs": 2}, None, 413, "--max-request-tokens"),
    ("/v1/completions", {"prompt": [[1, 2]] * 9, "prompt_logprobs": 2}, None, 413, "--max-prompts"),
])
def test_each_bad_request_is_refused_naming_the_limit_and_the_next_one_succeeds(server, path, body, raw,
                                                                                  status, needle):
    s, err, _ = post(server, path, body, raw)
    assert s == status and needle in json.dumps(err)
    assert post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 2})[0] == 200
    assert post(server, "/v1/completions", {"prompt": [[1, 2, 3]], "prompt_logprobs": 2})[0] == 200


def test_a_key_is_required_off_loopback_and_checked_when_set(server):
    with pytest.raises(ValueError, match="set an API key"):
        serve(server.app, host="0.0.0.0", port=0)
    keyed = serve(server.app, port=0, api_key="s3cret")
    try:
        assert post(keyed, "/v1/chat/completions", {"messages": MSG, "max_tokens": 2})[0] == 401
        ok = post(keyed, "/v1/chat/completions", {"messages": MSG, "max_tokens": 2},
                  headers={"Authorization": "Bearer s3cret"})
        assert ok[0] == 200
    finally:
        keyed.shutdown()
        server.app.api_key = None
