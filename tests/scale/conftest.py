"""Session fixtures of the scale tests: the 2-rank DDP step and its single-process reference are
computed once and shared by the DDP and FSDP tests."""

from __future__ import annotations

import pytest

from tests.scale.test_ddp import launch, one_process


@pytest.fixture(scope="session")
def ddp_ranks(tmp_path_factory):
    return launch("step", tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="session")
def single(ddp_ranks, tmp_path_factory):
    """One process fed the ranks' batches: the reference for DDP and FSDP2 alike (same seed, same
    sampler, so the same batches; the FSDP tests check that)."""
    return one_process(ddp_ranks, tmp_path_factory.mktemp("single"))
