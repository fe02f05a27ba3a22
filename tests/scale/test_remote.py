"""teacher=remote over real HTTP on 127.0.0.1: the schema, retries and errors, and a training step
that equals the step from the same teacher cached as top-k."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill.serve_teacher import Scorer, serve
from distill.teachers.remote import RemoteTeacher, RemoteTeacherError
from distill.train import train
from tests.scale.helpers import REPO, compose

V = 2048  # the tiny configs' stdlib BPE
K = 8


def tiny_teacher() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("teacher")
    tiny_teacher().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(teacher_dir):
    from transformers import AutoModelForCausalLM

    srv = serve(Scorer(AutoModelForCausalLM.from_pretrained(teacher_dir), "tiny", max_logprobs=16), port=0)
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def test_the_server_answers_vllms_prompt_logprobs_schema(server, teacher_dir):
    import urllib.request

    prompt = [5, 17, 300, 2, 9]
    req = urllib.request.Request(server + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "tiny", "prompt": [prompt], "max_tokens": 1,
                                                  "prompt_logprobs": 3}).encode())
    answer = json.loads(urllib.request.urlopen(req, timeout=30).read())
    rows = answer["choices"][0]["prompt_logprobs"]
    assert answer["object"] == "text_completion" and len(rows) == len(prompt) and rows[0] is None
    lp = torch.log_softmax(tiny_teacher()(torch.tensor([prompt])).logits[0].float(), -1)
    for i in range(1, len(prompt)):
        row = rows[i]
        assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in row.values())
        top = {tok: v for tok, v in row.items() if v["rank"] <= 3}
        ids = lp[i - 1].topk(3).indices.tolist()
        assert [int(t) for t in sorted(top, key=lambda t: top[t]["rank"])] == ids
        assert str(prompt[i]) in row  # the prompt's own token, as vLLM adds it
        assert row[str(prompt[i])]["logprob"] == pytest.approx(float(lp[i - 1, prompt[i]]), abs=1e-6)


def test_the_client_builds_rows_like_the_teacher_and_drops_vllms_extra_entry(server):
    teacher = RemoteTeacher(server, k=K, batch_size=2)
    ids = torch.tensor([[5, 17, 300, 2, 9, 0], [40, 41, 42, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    mask = (torch.arange(6) < torch.tensor([[5], [3], [6]])).long()
    out = teacher({"input_ids": ids, "attention_mask": mask}, frozenset())
    assert out.kind == "sparse" and out.topk_ids.shape == (3, 6, K) and out.topk_logprobs.dtype == torch.float32
    model = tiny_teacher()
    for row, n in enumerate((5, 3, 6)):
        lp = torch.log_softmax(model(ids[row:row + 1, :n]).logits[0].float(), -1)
        top = lp.topk(K, dim=-1)
        assert torch.equal(out.topk_ids[row, : n - 1], top.indices[: n - 1])
        assert torch.allclose(out.topk_logprobs[row, : n - 1], top.values[: n - 1], atol=1e-5)
    assert torch.isfinite(out.topk_logprobs).all()


class Flaky(BaseHTTPRequestHandler):
    """Fails the first ``fail`` requests with ``status``, then proxies to the real server."""

    fail, status, upstream, seen = 2, 503, "", []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Flaky.seen.append(len(json.loads(body)["prompt"]))
        if len(Flaky.seen) <= Flaky.fail:
            self.send_response(Flaky.status)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"busy!")
            return
        import urllib.request

        data = urllib.request.urlopen(urllib.request.Request(Flaky.upstream + self.path, data=body, method="POST",
                                                             headers={"Content-Type": "application/json"})).read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _flaky(server, fail, status):
    Flaky.fail, Flaky.status, Flaky.upstream, Flaky.seen = fail, status, server, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_retries_with_backoff_then_batches_requests(server):
    srv = _flaky(server, fail=2, status=503)
    try:
        teacher = RemoteTeacher(f"http://127.0.0.1:{srv.server_port}", model="tiny", k=K, batch_size=2,
                                retries=3, backoff_s=0.01)
        ids = torch.randint(0, V, (5, 4))
        out = teacher({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, frozenset())
        assert out.topk_ids.shape == (5, 4, K)
        assert Flaky.seen == [2, 2, 2, 2, 1], "two 503s retried, then 3 requests of <= 2 rows"
    finally:
        srv.shutdown()


def test_errors_name_the_fix(server):
    ids = torch.randint(0, V, (1, 4))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    srv = _flaky(server, fail=10, status=503)
    try:
        with pytest.raises(RemoteTeacherError, match=r"failed 2 times \(last: HTTP 503: busy!\).*distill-serve-teacher"):
            RemoteTeacher(f"http://127.0.0.1:{srv.server_port}", model="tiny", k=K, retries=1, backoff_s=0.0)(batch, frozenset())
    finally:
        srv.shutdown()
    with pytest.raises(RemoteTeacherError, match=r"refused with HTTP 400.*greater than max allowed: 16"):
        RemoteTeacher(server, model="tiny", k=32, retries=3)(batch, frozenset())
    with pytest.raises(RemoteTeacherError, match=r"HTTP 400.*does not exist"):
        RemoteTeacher(server, model="other", k=K)(batch, frozenset())
    from tests.scale.helpers import free_port

    with pytest.raises(RemoteTeacherError, match=r"failed 1 times.*Is the server up"):
        RemoteTeacher(f"http://127.0.0.1:{free_port()}", model="tiny", retries=0, timeout_s=2)(batch, frozenset())


# ----------------------------------------------------------------------------- training
SMALL = ["debug=tiny", "data.source.max_chars=3000", "data.max_val_examples=4", "trainer.max_steps=2",
         "export.enabled=false", "loss=kd_chunked", "module.grad_clip=null",
         # SGD: the weights then differ by lr x the gradient difference. (Adam's first steps move every
         # weight by about lr whatever the gradient's size, so float noise in a near-zero gradient
         # would flip whole lr-sized steps.)
         "~module.optimizer", "+module.optimizer={_target_: torch.optim.SGD, _partial_: true, lr: 0.5}"]


def _steps(run: Path) -> dict[int, dict]:
    rows = {}
    for path in run.rglob("metrics.csv"):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                rows[int(row["step"])] = {k: float(v) for k, v in row.items() if k.startswith("train/") and v}
    return rows


def test_a_remote_step_equals_the_step_from_the_same_teacher_cached_as_top_k(server, teacher_dir, tmp_path):
    from distill.teachers.cache.cli import cache_logits

    cache = tmp_path / "cache"
    cache_logits(compose([*SMALL[:3], f"+teacher.model.name_or_path={teacher_dir}", "~teacher.model.config",
                          "cache.teacher_name=tiny_random", f"cache.k={K}", "cache.progress=false", f"cache.dir={cache}",
                          "cache.encoding.layout=dense", "cache.encoding.ids=int32", "cache.encoding.values=float32",
                          "cache.encoding.tail=float32", "cache.max_steps=2"], tmp_path / "cache_run",
                         config_name="cache_logits"))
    cached, remote = tmp_path / "cached", tmp_path / "remote"
    at_cached = train(compose([*SMALL, "teacher=cached", "teacher.source=tiny_random", f"teacher.k={K}",
                               f"teacher.path={cache}"], cached))
    at_remote = train(compose([*SMALL, "teacher=remote", f"teacher.url={server}", f"teacher.k={K}", "teacher.model=tiny"],
                              remote))
    # validation scores the served teacher too (it brings no batch fields), as it scores the cache's val split
    for key in ("val/loss", "val/kl_sparse", "val/agreement"):
        assert at_remote[key] == pytest.approx(at_cached[key], abs=1e-5, rel=1e-5), key
    a, b = _steps(cached), _steps(remote)
    assert sorted(a) == sorted(b) == [0, 1]
    for step in a:
        assert b[step]["train/kl"] == pytest.approx(a[step]["train/kl"], abs=1e-6, rel=1e-5), step
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], abs=1e-6, rel=1e-5), step
    wa = torch.load(cached / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(remote / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    diffs = {k: (wa[k] - wb[k]).abs().max().item() for k in wa}
    assert max(diffs.values()) <= 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def test_distill_serve_teacher_command_serves_over_http(teacher_dir):
    proc = subprocess.Popen([sys.executable, "-m", "distill.serve_teacher", "--model", str(teacher_dir), "--port", "0",
                             "--served-model-name", "tiny"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", line).group(1)
        teacher = RemoteTeacher(url, k=4, retries=2, backoff_s=0.2)  # model=None: asks /v1/models
        ids = torch.tensor([[3, 4, 5, 6]])
        out = teacher({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, frozenset())
        assert teacher.model == "tiny" and out.topk_ids.shape == (1, 4, 4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
