"""Price table: every token kind priced, prefixes resolve snapshots, unknown models refused."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from pathlib import Path

from distill.api_client.pricing import CostTracker, PriceTable

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def shipped() -> PriceTable:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("teacher_data")
    return PriceTable.from_config(OmegaConf.to_container(cfg.pricing))


def test_shipped_table_prices_each_token_kind():
    t = shipped()
    u = {"input_tokens": 1_000_000, "output_tokens": 1_000_000, "cache_creation_input_tokens": 1_000_000,
         "cache_read_input_tokens": 1_000_000}
    assert t.cost("claude-sonnet-4-5", u) == pytest.approx(3 + 15 + 3.75 + 0.30)
    assert t.cost("claude-sonnet-4-5", u, batch=True) == pytest.approx((3 + 15 + 3.75 + 0.30) / 2)
    assert t.cost("claude-haiku-4-5", {"input_tokens": 2000, "output_tokens": 1000}) == pytest.approx(0.007)


def test_longest_prefix_wins_and_unknown_model_is_refused():
    t = shipped()
    assert t.price("claude-sonnet-4-5-20250929") == t.price("claude-sonnet-4-5")
    assert t.price("claude-opus-4-20250514").input == 15.0
    assert t.price("claude-opus-4-5-20251101").input == 5.0
    with pytest.raises(KeyError, match="'gpt-x' has no entry in pricing.models"):
        t.price("gpt-x")


def test_missing_cache_prices_default_to_published_multipliers():
    t = PriceTable({"m": {"input": 2.0, "output": 10.0}})
    assert t.price("m").cache_write == pytest.approx(2.5) and t.price("m").cache_read == pytest.approx(0.2)
    with pytest.raises(ValueError, match="pricing.models.m lacks"):
        PriceTable({"m": {"input": 1.0}})


def test_worst_case_bounds_any_call_and_budget_counts_reservations():
    t = PriceTable({"m": {"input": 3.0, "output": 15.0}})
    worst = t.worst_case("m", input_tokens=100, max_tokens=50)
    for u in ({"input_tokens": 100, "output_tokens": 50}, {"cache_creation_input_tokens": 100, "output_tokens": 50}):
        assert t.cost("m", u) <= worst + 1e-12
    tr = CostTracker(t, max_cost_usd=2.5 * worst)
    assert tr.try_reserve(worst) and tr.try_reserve(worst) and not tr.try_reserve(worst)
    tr.release(worst)
    tr.add("m", {"input_tokens": 100, "output_tokens": 50})
    assert tr.summary()["calls"] == 1 and tr.spent == pytest.approx(t.cost("m", {"input_tokens": 100, "output_tokens": 50}))
