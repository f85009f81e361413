"""Click-log simulator with known ground truth: each impression carries its true click probability.

Public API::

    from pipelines.simulator import SimulatorConfig, simulate
    summary = simulate(SimulatorConfig(days=7, users=10_000, items=5_000, impressions=1_000_000, seed=7),
                       "log.jsonl")          # or "log.parquet"
    summary.oracle_auc, summary.oracle_logloss, summary.impressions, summary.clicks

The log is canonical (``pipelines.events``), in event-time order, and written in chunks of at most
``chunk_rows`` impressions (plus the clicks that fall inside the chunk's time span), so its size never
has to fit in memory. The world it samples from:

- **Categories and items.** Each item has a category, a quality (a logit offset) and a Zipf popularity
  rank; a share of the items appears only on a later day.
- **Users.** Each user has a few interests (categories with weights), an activity level, a click bias,
  a preferred device and a first active day (new users keep arriving). Interests drift: each day a
  share of the users swaps one interest for a new category.
- **Requests.** A request is one page view with several impressions (positions 0..). Traffic follows a
  time-of-day rhythm. Each slot shows an item from one of the user's interests (most of the time) or
  from the global popularity ranking, both Zipf-weighted.
- **Clicks.** ``logit p = base + match_weight * interest(user, category) + quality + user bias
  + position bias + hour rhythm + device + page``. The interest term is the only user×item signal, and
  the user's recent clicked categories reveal it, so sequence models can beat ID-only ones. A click is
  its own event, later than its impression by a log-normal delay of seconds to minutes, with a small
  share beyond 30 minutes (so the attribution window matters).

The summary reports the oracle AUC and logloss of ``p_click`` against the drawn clicks (computed from
a fine histogram, so memory stays bounded): the best any model can do on this log.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.logfile import LogWriter, conform

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_LOGIT = np.array([0.0, 0.15, -0.1])
PAGES = ("home", "search", "detail")
PAGE_SHARE = np.array([0.5, 0.3, 0.2])
PAGE_LOGIT = np.array([0.0, 0.35, 0.2])
_AUC_BINS = 1 << 18


@dataclass(frozen=True)
class SimulatorConfig:
    """Every knob of the simulated world; the same config and seed give the same log, byte for byte."""

    days: int = 7
    users: int = 10_000
    items: int = 5_000
    impressions: int = 1_000_000
    seed: int = 0
    start: str = "2026-01-05"  # first day, UTC midnight (ISO date)
    categories: int = 40
    interests_per_user: int = 3
    max_positions: int = 10  # impressions per request are drawn from 1..max_positions
    zipf_alpha: float = 1.1  # item popularity: weight of rank r is 1 / r**alpha
    interest_share: float = 0.7  # share of slots filled from the user's interests
    daily_drift: float = 0.3  # share of users who swap one interest each day
    new_user_share: float = 0.3  # share of users whose first day is after day 0
    new_item_share: float = 0.3
    base_logit: float = -4.4
    match_weight: float = 1.6  # logit gain of a full interest match
    quality_std: float = 0.5
    user_bias_std: float = 0.4
    position_weight: float = 0.55  # logit loss per doubling of (1 + position)
    hour_amplitude: float = 0.25  # click rhythm; traffic rhythm peaks at the same evening hour
    peak_hour: int = 20
    long_click_share: float = 0.03  # clicks arriving more than 30 min after the impression
    chunk_rows: int = 100_000

    def __post_init__(self) -> None:
        checks = {
            "days": 1 <= self.days <= 3650,
            "users": self.users >= 1,
            "items": self.items >= 1,
            "impressions": self.impressions >= 1,
            "categories": 1 <= self.categories <= self.items,
            "interests_per_user": 1 <= self.interests_per_user <= self.categories,
            "max_positions": 1 <= self.max_positions <= 100,
            "zipf_alpha": self.zipf_alpha > 0,
            "interest_share": 0 <= self.interest_share <= 1,
            "daily_drift": 0 <= self.daily_drift <= 1,
            "new_user_share": 0 <= self.new_user_share < 1,
            "new_item_share": 0 <= self.new_item_share < 1,
            "long_click_share": 0 <= self.long_click_share <= 1,
            "chunk_rows": self.chunk_rows >= self.max_positions,
            "peak_hour": 0 <= self.peak_hour < 24,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid simulator settings: {', '.join(bad)} ({self})")
        self.start_ms  # noqa: B018 - fail early on a bad date

    @property
    def start_ms(self) -> int:
        try:
            day = datetime.fromisoformat(self.start).replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"start must be an ISO date like 2026-01-05, got {self.start!r}") from None
        return int(day.timestamp() * 1000)


@dataclass
class SimulationSummary:
    path: str
    impressions: int
    clicks: int
    ctr: float
    oracle_auc: float
    oracle_logloss: float
    start_ms: int
    end_ms: int
    chunks: int
    max_chunk_impressions: int
    config: dict = field(default_factory=dict)


class _OracleMetrics:
    """Streaming AUC (histogram of p_click, ties counted half) and logloss of the true probabilities."""

    def __init__(self) -> None:
        self.pos = np.zeros(_AUC_BINS, dtype=np.int64)
        self.neg = np.zeros(_AUC_BINS, dtype=np.int64)
        self.logloss_sum = 0.0
        self.n = 0

    def update(self, p: np.ndarray, y: np.ndarray) -> None:
        bins = np.minimum((p * _AUC_BINS).astype(np.int64), _AUC_BINS - 1)
        self.pos += np.bincount(bins[y], minlength=_AUC_BINS)
        self.neg += np.bincount(bins[~y], minlength=_AUC_BINS)
        q = np.clip(p, 1e-12, 1 - 1e-12)
        self.logloss_sum += float(-(np.log(q[y]).sum() + np.log1p(-q[~y]).sum()))
        self.n += len(p)

    def auc(self) -> float:
        n_pos, n_neg = self.pos.sum(), self.neg.sum()
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        neg_below = np.cumsum(self.neg) - self.neg
        return float((self.pos * (neg_below + 0.5 * self.neg)).sum() / (n_pos * n_neg))

    def logloss(self) -> float:
        return self.logloss_sum / self.n if self.n else float("nan")


class _World:
    """The latent state: items, users and their (drifting) interests."""

    def __init__(self, cfg: SimulatorConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        c, k = cfg.categories, cfg.interests_per_user
        # Items: every category gets at least one item; popularity rank is a random permutation.
        self.item_category = np.concatenate(
            [np.arange(c), rng.integers(0, c, size=cfg.items - c)]
        )[rng.permutation(cfg.items)]
        rank = rng.permutation(cfg.items) + 1
        self.item_popularity = 1.0 / rank.astype(np.float64) ** cfg.zipf_alpha
        self.item_quality = rng.normal(0.0, cfg.quality_std, cfg.items)
        self.item_first_day = _first_days(rng, cfg.items, cfg.new_item_share, cfg.days)
        # Users.
        self.user_activity = rng.lognormal(0.0, 1.0, cfg.users)
        self.user_bias = rng.normal(0.0, cfg.user_bias_std, cfg.users)
        self.user_device = rng.choice(len(DEVICES), size=cfg.users, p=[0.6, 0.3, 0.1])
        self.user_first_day = _first_days(rng, cfg.users, cfg.new_user_share, cfg.days)
        self.interests = np.stack([rng.choice(c, size=k, replace=False) for _ in range(cfg.users)])
        self.interest_weights = rng.dirichlet(np.ones(k) * 2.0, size=cfg.users)

    def drift(self) -> None:
        """A share of the users replaces one interest with a category they do not follow yet."""
        cfg, rng = self.cfg, self.rng
        movers = np.flatnonzero(rng.random(cfg.users) < cfg.daily_drift)
        slots = rng.integers(0, cfg.interests_per_user, size=len(movers))
        for u, slot in zip(movers.tolist(), slots.tolist(), strict=True):
            current = self.interests[u]
            choices = np.setdiff1d(np.arange(cfg.categories), current)
            if len(choices):
                current[slot] = rng.choice(choices)
        # A mover's weights are redrawn from the same symmetric Dirichlet: the new interest is not
        # favoured, but every share changes, so what a drifting user clicks really changes.
        self.interest_weights[movers] = rng.dirichlet(np.ones(cfg.interests_per_user) * 2.0, len(movers))

    def day_tables(self, day: int) -> _DayTables:
        cfg = self.cfg
        active_users = self.user_first_day <= day
        user_cdf = np.cumsum(np.where(active_users, self.user_activity, 0.0))
        active_items = self.item_first_day <= day
        weights = np.where(active_items, self.item_popularity, 0.0)
        item_cdf = np.cumsum(weights)
        per_category = []
        for cat in range(cfg.categories):
            members = np.flatnonzero((self.item_category == cat) & active_items)
            if len(members) == 0:  # a category with no live item yet falls back to the global ranking
                per_category.append((np.arange(cfg.items), item_cdf))
            else:
                per_category.append((members, np.cumsum(self.item_popularity[members])))
        return _DayTables(user_cdf, item_cdf, per_category)


@dataclass
class _DayTables:
    user_cdf: np.ndarray
    item_cdf: np.ndarray
    per_category: list[tuple[np.ndarray, np.ndarray]]


def _first_days(rng: np.random.Generator, n: int, late_share: float, days: int) -> np.ndarray:
    first = np.zeros(n, dtype=np.int64)
    if days > 1:
        late = rng.random(n) < late_share
        first[late] = rng.integers(1, days, size=int(late.sum()))
    return first


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")


def _hour_curve(cfg: SimulatorConfig) -> np.ndarray:
    hours = np.arange(24)
    return np.cos(2 * np.pi * (hours - cfg.peak_hour) / 24)


def _request_times(
    rng: np.random.Generator, n_requests: int, day_start_ms: int, cfg: SimulatorConfig
) -> np.ndarray:
    """Sorted request times over one day, following the traffic rhythm (times, not rows: 8 bytes each)."""
    second_weight = np.repeat(1.0 + 0.6 * _hour_curve(cfg), 3600)
    per_second = rng.multinomial(n_requests, second_weight / second_weight.sum())
    second = np.repeat(np.arange(86_400), per_second)
    # Stratified within each second: the j-th of n requests lands in [j/n, (j+1)/n) of the second.
    first_of_second = np.cumsum(per_second) - per_second
    rank = np.arange(n_requests) - first_of_second[second]
    jitter = rng.random(n_requests)
    offset_ms = ((rank + jitter) / per_second[second] * 1000).astype(np.int64)
    return day_start_ms + second * 1000 + offset_ms


def _click_delays_ms(rng: np.random.Generator, n: int, cfg: SimulatorConfig) -> np.ndarray:
    """Mostly seconds to minutes (log-normal, median 20 s), a few 30 min to 6 h."""
    short = np.clip(rng.lognormal(math.log(20.0), 1.3, n), 1.0, 1799.0)
    long = np.clip(1800.0 + rng.exponential(3600.0, n), 1801.0, 6 * 3600.0)
    delay_s = np.where(rng.random(n) < cfg.long_click_share, long, short)
    return (delay_s * 1000).astype(np.int64)


def _strings(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.string())


class _PendingClicks:
    """Clicks drawn but not yet written: they are emitted once the impression stream has passed them."""

    def __init__(self) -> None:
        self.columns: dict[str, np.ndarray] = {}

    def add(self, new: dict[str, np.ndarray]) -> None:
        self.columns = (
            {k: np.concatenate([self.columns[k], v]) for k, v in new.items()} if self.columns else new
        )

    def take_until(self, time_ms: int | None) -> dict[str, np.ndarray]:
        if not self.columns:
            return {}
        due = (
            np.ones(len(self.columns["event_time"]), bool)
            if time_ms is None
            else self.columns["event_time"] <= time_ms
        )
        taken = {k: v[due] for k, v in self.columns.items()}
        self.columns = {k: v[~due] for k, v in self.columns.items()}
        return taken


def _clicks_table(clicks: dict[str, np.ndarray]) -> pa.Table:
    return pa.table(
        {
            "type": pa.array(["click"] * len(clicks["event_time"]), pa.string()),
            "impression_id": _strings(clicks["impression_id"]),
            "user_id": _strings(clicks["user_id"]),
            "item_id": _strings(clicks["item_id"]),
            "event_time": pa.array(clicks["event_time"], pa.int64()),
        }
    )


def simulate(
    config: SimulatorConfig,
    out_path: Path | str,
    on_chunk: Callable[[int], None] | None = None,
) -> SimulationSummary:
    """Write a simulated canonical log to ``out_path`` (.jsonl or .parquet) and return its summary.

    ``on_chunk(n_impressions)`` is called after each chunk (for progress bars)."""
    cfg = config
    rng = np.random.default_rng(cfg.seed)
    world = _World(cfg, rng)
    oracle = _OracleMetrics()
    pending = _PendingClicks()
    hour_logit = cfg.hour_amplitude * _hour_curve(cfg)
    per_day = np.full(cfg.days, cfg.impressions // cfg.days)
    per_day[: cfg.impressions % cfg.days] += 1
    next_impression = next_request = 1
    n_clicks = chunks = max_chunk = 0
    end_ms = cfg.start_ms

    with LogWriter(out_path) as writer:
        for day in range(cfg.days):
            if day:
                world.drift()
            tables = world.day_tables(day)
            sizes = _request_sizes(rng, int(per_day[day]), cfg.max_positions)
            if len(sizes) == 0:
                continue
            times = _request_times(rng, len(sizes), cfg.start_ms + day * DAY_MS, cfg)
            for lo, hi in _chunk_bounds(sizes, cfg.chunk_rows):
                imp = _impressions(world, tables, rng, sizes[lo:hi], times[lo:hi], hour_logit,
                                   next_impression, next_request)
                next_impression += len(imp["event_time"])
                next_request += hi - lo
                clicked = rng.random(len(imp["p_click"])) < imp["p_click"]
                oracle.update(imp["p_click"], clicked)
                pending.add(
                    {
                        "impression_id": imp["impression_id"][clicked],
                        "user_id": imp["user_id"][clicked],
                        "item_id": imp["item_id"][clicked],
                        "event_time": imp["event_time"][clicked]
                        + _click_delays_ms(rng, int(clicked.sum()), cfg),
                    }
                )
                last_time = int(imp["event_time"][-1])
                due = pending.take_until(last_time)
                n_clicks += _write_chunk(writer, imp, due)
                chunks += 1
                max_chunk = max(max_chunk, len(imp["event_time"]))
                end_ms = max(end_ms, last_time)
                if on_chunk:
                    on_chunk(len(imp["event_time"]))
        rest = pending.take_until(None)
        if rest and len(rest["event_time"]):
            order = np.argsort(rest["event_time"], kind="stable")
            rest = {k: v[order] for k, v in rest.items()}
            writer.write(_clicks_table(rest))
            n_clicks += len(rest["event_time"])
            end_ms = max(end_ms, int(rest["event_time"][-1]))

    n_imp = next_impression - 1
    return SimulationSummary(
        path=str(out_path),
        impressions=n_imp,
        clicks=n_clicks,
        ctr=n_clicks / n_imp,
        oracle_auc=oracle.auc(),
        oracle_logloss=oracle.logloss(),
        start_ms=cfg.start_ms,
        end_ms=end_ms,
        chunks=chunks,
        max_chunk_impressions=max_chunk,
        config=asdict(cfg),
    )


def _chunk_bounds(sizes: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """Request index ranges of at most ``chunk_rows`` impressions; a request is never split."""
    cum = np.r_[0, np.cumsum(sizes)]
    bounds, lo = [], 0
    while lo < len(sizes):
        hi = int(np.searchsorted(cum, cum[lo] + chunk_rows, side="right")) - 1
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _request_sizes(rng: np.random.Generator, n_impressions: int, max_positions: int) -> np.ndarray:
    """Request sizes in 1..max_positions that add up to exactly ``n_impressions``."""
    if n_impressions == 0:
        return np.zeros(0, dtype=np.int64)
    guess = int(n_impressions / ((1 + max_positions) / 2) * 1.1) + 2
    sizes = rng.integers(1, max_positions + 1, size=guess)
    while sizes.sum() < n_impressions:
        sizes = np.concatenate([sizes, rng.integers(1, max_positions + 1, size=guess)])
    cum = np.cumsum(sizes)
    last = int(np.searchsorted(cum, n_impressions))
    sizes = sizes[: last + 1].copy()
    sizes[-1] -= int(cum[last] - n_impressions)
    return sizes


def _impressions(
    world: _World,
    tables: _DayTables,
    rng: np.random.Generator,
    sizes: np.ndarray,
    request_times: np.ndarray,
    hour_logit: np.ndarray,
    first_impression: int,
    first_request: int,
) -> dict[str, np.ndarray]:
    """One chunk of impressions (column arrays) for consecutive requests."""
    cfg = world.cfg
    n_req = len(sizes)
    req_user = _draw(rng, tables.user_cdf, n_req)
    req_device = np.where(
        rng.random(n_req) < 0.8, world.user_device[req_user], rng.integers(0, len(DEVICES), n_req)
    )
    req_page = rng.choice(len(PAGES), size=n_req, p=PAGE_SHARE)
    req_index = np.repeat(np.arange(n_req), sizes)
    starts = np.cumsum(sizes) - sizes
    position = np.arange(len(req_index)) - starts[req_index]
    user = req_user[req_index]
    n = len(user)

    # Item choice: from one of the user's interests (by weight) or from the global ranking.
    item = _draw(rng, tables.item_cdf, n)
    from_interest = rng.random(n) < cfg.interest_share
    cum_w = np.cumsum(world.interest_weights[user], axis=1)
    slot = np.minimum((rng.random(n)[:, None] > cum_w).sum(axis=1), cfg.interests_per_user - 1)
    wanted = world.interests[user, slot]
    for cat in np.unique(wanted[from_interest]).tolist():
        rows = np.flatnonzero(from_interest & (wanted == cat))
        members, cdf = tables.per_category[cat]
        item[rows] = members[_draw(rng, cdf, len(rows))]

    category = world.item_category[item]
    match = (world.interests[user] == category[:, None]) * world.interest_weights[user]
    interest = match.sum(axis=1) * cfg.interests_per_user  # 1.0 = an average interest
    event_time = request_times[req_index]
    hour = (event_time // HOUR_MS) % 24
    logit = (
        cfg.base_logit
        + cfg.match_weight * np.minimum(interest, 2.0)
        + world.item_quality[item]
        + world.user_bias[user]
        - cfg.position_weight * np.log2(1.0 + position)
        + hour_logit[hour]
        + DEVICE_LOGIT[req_device[req_index]]
        + PAGE_LOGIT[req_page[req_index]]
    )
    return {
        "impression_id": np.arange(first_impression, first_impression + n),
        "request_id": (first_request + req_index),
        "user_id": user + 1,
        "item_id": item + 1,
        "position": position,
        "category": category + 1,
        "hour": hour,
        "device": req_device[req_index],
        "page": req_page[req_index],
        "event_time": event_time,
        "p_click": 1.0 / (1.0 + np.exp(-logit)),
    }


def _write_chunk(writer: LogWriter, imp: dict[str, np.ndarray], clicks: dict[str, np.ndarray]) -> int:
    """Write impressions and due clicks merged in event-time order; returns the number of clicks."""
    n_imp = len(imp["event_time"])
    n_clk = len(clicks.get("event_time", ()))
    impressions = pa.table(
        {
            "type": pa.array(["impression"] * n_imp, pa.string()),
            "impression_id": _strings(imp["impression_id"]),
            "request_id": _strings(imp["request_id"]),
            "user_id": _strings(imp["user_id"]),
            "item_id": _strings(imp["item_id"]),
            "position": pa.array(imp["position"], pa.int32()),
            "category": _strings(imp["category"]),
            "hour": pa.array(imp["hour"], pa.int8()),
            "device": pa.array(np.array(DEVICES)[imp["device"]], pa.string()),
            "page": pa.array(np.array(PAGES)[imp["page"]], pa.string()),
            "event_time": pa.array(imp["event_time"], pa.int64()),
            "p_click": pa.array(imp["p_click"], pa.float64()),
        }
    )
    if n_clk == 0:
        writer.write(impressions)
        return 0
    merged = pa.concat_tables([conform(impressions), conform(_clicks_table(clicks))])
    times = np.concatenate([imp["event_time"], clicks["event_time"]])
    kind = np.r_[np.zeros(n_imp, np.int8), np.ones(n_clk, np.int8)]
    order = np.lexsort((kind, times))  # time first; impressions before clicks at equal times
    writer.write(merged.take(order))
    return n_clk
