"""Dollar cost of Messages API calls, from a per-model price table kept in config.

Prices live in ``conf/teacher_data/pricing/*.yaml`` rather than in code because they change more
often than this module does; a run prices every call from the table it was started with, and the
table is saved with the run's Hydra config so the reported dollars can be audited later.

All prices are US dollars per **million** tokens, as Anthropic publishes them. The four token
kinds of :class:`anthropic.types.Usage` are priced separately: plain input, output, prompt-cache
writes (``cache_creation_input_tokens``) and prompt-cache reads (``cache_read_input_tokens``).
Message Batches are billed at a discount (50% at the time of writing) on all four.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def usage_dict(usage: Any) -> dict[str, int]:
    """The four billed token counts of an SDK ``Usage`` (or a dict), missing ones as 0.

    The API reports ``None`` for the cache fields when caching was not involved; storing zeros keeps
    every record summable.
    """
    out = {}
    for k in USAGE_FIELDS:
        v = usage.get(k) if isinstance(usage, Mapping) else getattr(usage, k, None)
        out[k] = int(v or 0)
    return out


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for one model."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    def cost(self, usage: Mapping[str, int], discount: float = 0.0) -> float:
        u = usage_dict(usage)
        dollars = (u["input_tokens"] * self.input + u["output_tokens"] * self.output
                   + u["cache_creation_input_tokens"] * self.cache_write
                   + u["cache_read_input_tokens"] * self.cache_read) / 1e6
        return dollars * (1.0 - discount)


class PriceTable:
    """Looks up a model's price; the longest configured name that prefixes the model id wins.

    Prefix matching lets one entry (``claude-sonnet-4-5``) price every dated snapshot
    (``claude-sonnet-4-5-20250929``) without a table edit per release, while an unknown model is an
    error rather than a silent $0: an unpriced run would make ``max_cost_usd`` meaningless.
    """

    def __init__(self, models: Mapping[str, Mapping[str, float]], batch_discount: float = 0.5):
        if not models:
            raise ValueError("pricing.models is empty: add at least one model's prices "
                             "(conf/teacher_data/pricing/anthropic.yaml)")
        self.models: dict[str, ModelPrice] = {}
        for name, p in models.items():
            missing = [k for k in ("input", "output") if k not in p]
            if missing:
                raise ValueError(f"pricing.models.{name} lacks {missing} (USD per million tokens)")
            inp = float(p["input"])
            # Anthropic's published multipliers: 5-minute cache writes cost 1.25x input, reads 0.1x.
            self.models[name] = ModelPrice(
                input=inp, output=float(p["output"]),
                cache_write=float(p.get("cache_write", inp * 1.25)),
                cache_read=float(p.get("cache_read", inp * 0.1)))
        if not 0.0 <= batch_discount < 1.0:
            raise ValueError(f"pricing.batch_discount must be in [0, 1), got {batch_discount}")
        self.batch_discount = float(batch_discount)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "PriceTable":
        return cls(cfg.get("models") or {}, float(cfg.get("batch_discount", 0.5)))

    def resolve(self, model: str) -> str:
        """The table entry that prices ``model``."""
        hits = [name for name in self.models if model == name or model.startswith(name)]
        if not hits and "*" in self.models:  # a catch-all entry, e.g. $0 for a model served locally
            return "*"
        if not hits:
            raise KeyError(f"model {model!r} has no entry in pricing.models "
                           f"(known: {sorted(self.models)}); add its prices to the pricing config")
        return max(hits, key=len)

    def price(self, model: str) -> ModelPrice:
        return self.models[self.resolve(model)]

    def cost(self, model: str, usage: Any, batch: bool = False) -> float:
        return self.price(model).cost(usage_dict(usage), self.batch_discount if batch else 0.0)

    def worst_case(self, model: str, input_tokens: int, max_tokens: int, batch: bool = False) -> float:
        """Upper bound on one call's cost, used to reserve budget before the call is made.

        Input is priced at the dearer of plain input and cache write, so the bound holds whether or
        not the system prompt ends up written to the cache.
        """
        p = self.price(model)
        disc = self.batch_discount if batch else 0.0
        return (input_tokens * max(p.input, p.cache_write) + max_tokens * p.output) / 1e6 * (1 - disc)


@dataclass
class CostTracker:
    """Running totals of tokens and dollars, plus a reservation ledger for the budget.

    The budget check counts *reserved* worst-case cost of calls in flight, not just what has been
    spent: otherwise ``concurrency`` calls started just below the limit could all land above it.
    """

    prices: PriceTable
    max_cost_usd: float | None = None
    spent: float = 0.0
    reserved: float = 0.0
    calls: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: {k: 0 for k in USAGE_FIELDS})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def try_reserve(self, amount: float) -> bool:
        with self._lock:
            if self.max_cost_usd is not None and self.spent + self.reserved + amount > self.max_cost_usd:
                return False
            self.reserved += amount
            return True

    def release(self, amount: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - amount)

    def add(self, model: str, usage: Any, batch: bool = False) -> float:
        """Record one billed call; returns its cost."""
        u = usage_dict(usage)
        cost = self.prices.cost(model, u, batch=batch)
        with self._lock:
            self.spent += cost
            self.calls += 1
            for k in USAGE_FIELDS:
                self.tokens[k] += u[k]
        return cost

    def add_existing(self, usage: Mapping[str, int], cost: float) -> None:
        """Count calls already paid for in an earlier run, so the budget spans reruns."""
        u = usage_dict(usage)
        with self._lock:
            self.spent += float(cost)
            self.calls += 1
            for k in USAGE_FIELDS:
                self.tokens[k] += u[k]

    def summary(self) -> dict[str, Any]:
        return {"calls": self.calls, "cost_usd": round(self.spent, 6), **self.tokens}
