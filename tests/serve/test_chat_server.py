"""distill-serve-teacher with the real SmolLM2-135M-Instruct on loopback: both chat APIs equal
``generate``, usage equals the tokenizer's, log-probs equal the model's, and every refusal (queue
full, malformed or oversized request, bad ids) leaves the server answering the next request.

Kept quick on 2 shared cores: the server is the session's (``conftest.smol_server``), the reference
generations and the server's answers to the shared conversation are made once per module, answers
are NEW tokens long, and the follow-up request after each refusal asks for one token.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

from serve_helpers import post

NEW = 8  # greedy tokens per answer: enough to differ between prompts, cheap on 2 cores
SYSTEM = {"role": "system", "content": "Be brief."}
MSG = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
CONV = [SYSTEM] + MSG
OTHER = [{"role": "user", "content": "What is 3 plus 3?"}]


def reference(app, messages):
    """What ``generate`` answers on its own (greedy, unpadded, stopped at end-of-turn), with the
    prompt tokenised by the tokenizer's own chat template, not by the server's code."""
    tok = app.chat.tokenizer
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    x = torch.tensor([list(ids)])
    with torch.no_grad():
        out = app.chat.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=NEW,
                                      do_sample=False, temperature=None, top_p=None, top_k=None,
                                      eos_token_id=app.chat.stop_ids, pad_token_id=app.chat.pad_id)
    new = out[0, x.shape[1]:].tolist()
    hit = next((i for i, t in enumerate(new) if t in app.chat.stop_ids), None)
    new = new if hit is None else new[:hit + 1]
    text = tok.decode([t for t in new if t not in app.chat.stop_ids], skip_special_tokens=True)
    return x[0].tolist(), new, text


@pytest.fixture(scope="module")
def refs(smol_server):
    app = smol_server.app
    return {"conv": reference(app, CONV), "other": reference(app, OTHER)}


@pytest.fixture(scope="module")
def answers(smol_server):
    """The shared conversation through both endpoints once: OpenAI with top-3 log-probs (greedy, so
    asking for them must not change the answer), Anthropic with ``system`` as cached text blocks."""
    oa = post(smol_server, "/v1/chat/completions", {"model": smol_server.app.name, "max_tokens": NEW,
                                                    "temperature": 0, "messages": CONV,
                                                    "logprobs": True, "top_logprobs": 3})
    an = post(smol_server, "/v1/messages", {"model": smol_server.app.name, "max_tokens": NEW, "temperature": 0,
                                            "system": [{"type": "text", "text": SYSTEM["content"],
                                                        "cache_control": {"type": "ephemeral"}}], "messages": MSG})
    return oa, an


def test_both_endpoints_answer_greedy_like_generate_with_the_tokenizers_usage(smol_server, refs, answers):
    prompt, new, text = refs["conv"]
    (s, oa, _), (s2, an, _) = answers
    assert s == 200 and oa["choices"][0]["message"]["content"] == text
    assert oa["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(new),
                           "total_tokens": len(prompt) + len(new)}
    stopped = new[-1] in smol_server.app.chat.stop_ids
    assert oa["choices"][0]["finish_reason"] == ("stop" if stopped else "length")
    assert s2 == 200 and an["content"][0]["text"] == text
    assert an["usage"]["input_tokens"] == len(prompt) and an["usage"]["output_tokens"] == len(new)
    assert an["stop_reason"] == ("end_turn" if stopped else "max_tokens")


def test_openai_logprobs_equal_the_models_log_softmax(smol_server, refs, answers):
    app = smol_server.app
    prompt, new, _ = refs["conv"]
    content = answers[0][1]["choices"][0]["logprobs"]["content"]
    body = [t for t in new if t not in app.chat.stop_ids]  # the stop token is counted, not shown
    assert len(content) == len(body) > 0
    with torch.no_grad():
        lp = torch.log_softmax(app.chat.model(torch.tensor([prompt + body])).logits[0].float(), -1)
    for n, (tok, entry) in enumerate(zip(body, content)):
        row = lp[len(prompt) - 1 + n]
        assert entry["logprob"] == pytest.approx(float(row[tok]), abs=1e-4)
        top = row.topk(3)
        assert [t["logprob"] for t in entry["top_logprobs"]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_queued_requests_batch_in_order_a_full_queue_gets_429_then_the_server_recovers(smol_server, refs):
    app = smol_server.app
    asks = [CONV, OTHER]
    got = {}
    app.batcher.pause()  # hold the worker so that both requests queue (max_queue=2) deterministically
    try:
        def ask(i):
            got[i] = post(smol_server, "/v1/chat/completions",
                          {"messages": asks[i], "max_tokens": NEW, "temperature": 0})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        while len(app.batcher.queue) < 2:
            threading.Event().wait(0.01)
        s, err, hdr = post(smol_server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 1})
        assert s == 429 and "--max-queue" in err["error"]["message"] and float(hdr["retry-after"]) > 0
    finally:
        app.batcher.resume()
    for t in threads:
        t.join()
    # One left-padded generate for both, each answer equal to its own unpadded reference.
    assert app.batcher.batch_sizes[-1] == 2
    assert [got[i][0] for i in range(2)] == [200, 200]
    assert [got[i][1]["choices"][0]["message"]["content"] for i in range(2)] == [refs["conv"][2], refs["other"][2]]
    assert post(smol_server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 1})[0] == 200


BAD = [
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
]


def test_each_bad_request_is_refused_naming_the_limit_and_the_next_one_succeeds(smol_server):
    # One loop, not 11 parametrised tests: each case is its refusal plus one cheap normal request on
    # the same endpoint family (a one-token answer, or a three-token scoring).
    for path, body, raw, status, needle in BAD:
        s, err, _ = post(smol_server, path, body, raw)
        assert (s, needle in json.dumps(err)) == (status, True), (path, needle, s, err)
        if path == "/v1/completions":
            ok = post(smol_server, path, {"prompt": [[1, 2, 3]], "prompt_logprobs": 2})
        else:
            ok = post(smol_server, path, {"messages": MSG, "max_tokens": 1})
        assert ok[0] == 200, (path, needle, ok)


def test_a_key_is_required_off_loopback_and_checked_when_set(smol_server):
    from distill.serve.http import serve

    with pytest.raises(ValueError, match="set an API key"):
        serve(smol_server.app, host="0.0.0.0", port=0)
    keyed = serve(smol_server.app, port=0, api_key="s3cret")
    try:
        assert post(keyed, "/v1/chat/completions", {"messages": MSG, "max_tokens": 1})[0] == 401
        ok = post(keyed, "/v1/chat/completions", {"messages": MSG, "max_tokens": 1},
                  headers={"Authorization": "Bearer s3cret"})
        assert ok[0] == 200
    finally:
        keyed.shutdown()
        smol_server.app.api_key = None  # the App is shared with the loopback server
