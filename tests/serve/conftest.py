"""A SmolLM2-135M-Instruct server per test module of tests/serve.

The GGUF file is converted once per session into the session's cache (``smollm2_folder``); loading
the converted folder then takes about a second, so each module gets its own server and nothing
stays loaded for the rest of the session.

On 2 cores shared with other jobs, torch's default of one thread per core makes every matmul wait
for a descheduled sibling thread: 24 new tokens took ~25 s with 2 threads and ~3 s with 1. So the
server runs on one thread while its module runs, and the setting is restored afterwards.
"""

from __future__ import annotations

import pytest

PRESET = "preset:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol_server(smollm2_folder):
    """``distill-serve-teacher`` on loopback with small limits, so each refusal is cheap to provoke.

    ``smollm2_folder`` (tests/conftest.py) converts the GGUF file once per session (or skips without
    the wheel); the preset below resolves to that same folder in the session's cache.
    """
    from distill.serve.cli import load_app
    from distill.serve.errors import ServeLimits
    from distill.serve.http import serve

    app = load_app(PRESET, limits=ServeLimits(max_queue=2, max_batch=4, max_tokens=64, max_prompt_tokens=512,
                                              max_request_tokens=1024, max_prompts=8, max_body_bytes=20_000))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    srv = serve(app, port=0)
    try:
        yield srv
    finally:
        srv.shutdown()
        torch.set_num_threads(threads)

