"""The batching plan: which batch sizes pay on this machine, chosen from measured costs.

A fixed ``max_batch_size`` tuned on one machine loses on another: where ONNX
Runtime's cost per image does not fall with the batch size (small CNNs on a
few CPU cores), a batcher that waits for company only adds latency, and a
batch padded up to a bucket spends cores on zeros. So the model's warm-up,
which runs every candidate bucket anyway, times each one
(:meth:`lookalike_server.models.OnnxModel.warmup`), and :func:`choose_plan`
turns those costs into a plan with one rule:

1. **Buckets.** Walk the candidate buckets upwards from 1 (always kept). Keep
   bucket ``b`` only if its cost per image is at most ``(1 - epsilon)`` times
   that of the best bucket kept so far. A bucket that saves less than
   ``epsilon`` is not worth the wait for company or the padding.
2. **Largest batch** = the largest kept bucket.
3. **How many of the queued items to run.** With ``n`` items queued the
   batcher runs whichever costs least per real image: all ``n`` padded up to
   the next kept bucket, or only the largest kept bucket that ``n`` fills
   (the rest wait for the next run, which starts at once). On a CPU, where a
   padded row costs as much as a real one, this avoids running zeros; on a
   GPU, where a run costs about the same whatever its size, it pads.
4. **Delay.** If no bucket beats batch 1 by ``epsilon``, batching is off and
   the delay is 0: each item runs as soon as the session is free (under load
   the next items queue while it runs). Otherwise the oldest item waits at
   most ``min(default delay, the time one image takes alone)``: waiting
   longer than a solo run costs more than the run itself. (The batcher waits
   at all only as the last free worker: :mod:`lookalike_server.batching`.)

An explicit ``max_batch_size`` or ``max_delay_ms`` (flag, env, TOML or the
model's registry entry) wins over rules 1-4; with an explicit
``max_batch_size`` every warmed bucket is kept and a run takes everything
queued (rule 3 off), as configured. The plan says which value came from where
in :attr:`BatchPlan.reason`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_EPSILON = 0.10
DEFAULT_DELAY_MS = 2.0


@dataclass(frozen=True)
class BatchPlan:
    """How a model's batcher runs, and why.

    Attributes:
        costs_ms: Median milliseconds per run of each measured bucket (empty: not measured).
        buckets: Batch sizes requests are padded up to (ascending, starting at 1 unless fixed).
        max_batch_size: Largest batch one run takes.
        max_delay_ms: Longest the oldest queued item waits for company.
        take: ``take[n - 1]`` = how many of ``n`` queued items one run takes
            (``n`` from 1 to ``max_batch_size``).
        reason: One line saying how the values were chosen.
    """

    costs_ms: Mapping[int, float]
    buckets: tuple[int, ...]
    max_batch_size: int
    max_delay_ms: float
    take: tuple[int, ...]
    reason: str

    def per_image_ms(self, bucket: int) -> float | None:
        """Measured milliseconds per image at ``bucket`` (None if not measured)."""
        cost = self.costs_ms.get(bucket)
        return None if cost is None else cost / bucket

    def items_to_take(self, queued: int) -> int:
        """How many of ``queued`` items the next run takes (at least 1, at most ``max_batch_size``)."""
        n = min(max(queued, 1), self.max_batch_size)
        return self.take[n - 1] if n <= len(self.take) else n


def keep_buckets(costs_ms: Mapping[int, float], epsilon: float = DEFAULT_EPSILON) -> tuple[int, ...]:
    """Rule 1: the buckets whose cost per image beats every smaller kept bucket's by ``epsilon``.

    Args:
        costs_ms: Milliseconds per run, by bucket size.
        epsilon: Fraction of the per-image cost a larger bucket must save.

    Returns:
        The kept buckets, ascending; the smallest measured bucket is always kept.
    """
    kept: list[int] = []
    best = float("inf")
    for b in sorted(costs_ms):
        per_image = costs_ms[b] / b
        if not kept or per_image <= (1.0 - epsilon) * best:
            kept.append(b)
            best = per_image
    return tuple(kept)


def take_table(costs_ms: Mapping[int, float], buckets: Sequence[int]) -> tuple[int, ...]:
    """Rule 3: for ``n`` = 1..max queued items, how many one run should take.

    Compares running all ``n`` padded up to the next bucket with running just
    the largest bucket ``n`` fills; the lower cost per real image wins (ties:
    take more, so fewer runs). Buckets without a measured cost always pad.
    """
    table: list[int] = []
    for n in range(1, max(buckets) + 1):
        up = next(b for b in buckets if b >= n)
        down = max((b for b in buckets if b <= n), default=up)
        if up == n or down == up or up not in costs_ms or down not in costs_ms:
            table.append(n)
            continue
        table.append(n if costs_ms[up] / n <= costs_ms[down] / down else down)
    return tuple(table)


def choose_plan(
    costs_ms: Mapping[int, float],
    candidates: Sequence[int],
    *,
    max_batch_size: int | None = None,
    max_delay_ms: float | None = None,
    epsilon: float = DEFAULT_EPSILON,
    default_delay_ms: float = DEFAULT_DELAY_MS,
) -> BatchPlan:
    """Applies rules 1-4 to measured costs; explicit settings win.

    Args:
        costs_ms: Median milliseconds per run by bucket; empty = not measured
            (warm-up off), which keeps the candidates and the default delay.
        candidates: Warmed buckets, ascending.
        max_batch_size: An explicit largest batch (None = choose).
        max_delay_ms: An explicit delay (None = choose).
        epsilon: See :func:`keep_buckets`.
        default_delay_ms: The delay used when batching pays (capped by rule 4).

    Returns:
        The plan.
    """
    measured = {b: c for b, c in costs_ms.items() if b in candidates}
    why: list[str] = []
    if max_batch_size is not None:
        # As configured, as before tuning existed: every candidate bucket, and
        # whatever is queued runs together, padded.
        buckets = tuple(b for b in candidates if b <= max_batch_size) or (max_batch_size,)
        why.append(f"max batch {max_batch_size} set by config")
    elif measured:
        buckets = keep_buckets(measured, epsilon)
        dropped = [b for b in candidates if b not in buckets]
        if len(buckets) == 1:
            best_other = min((c / b for b, c in measured.items() if b != buckets[0]), default=None)
            detail = "" if best_other is None else f" (best other {best_other:.2f} ms/image)"
            why.append(
                f"no batch size beat {buckets[0]} ({measured[buckets[0]] / buckets[0]:.2f} ms/image) "
                f"by {epsilon:.0%}{detail}: batching off"
            )
        else:
            per = ", ".join(f"{b}:{measured[b] / b:.2f}" for b in buckets)
            why.append(f"kept buckets saving >= {epsilon:.0%} per image (ms/image {per})")
            if dropped:
                why.append(f"dropped {dropped}")
    else:
        buckets = tuple(candidates)
        why.append("not measured (warm-up off): all candidate buckets")
    max_batch = max(buckets)
    if max_delay_ms is not None:
        delay = max_delay_ms
        why.append(f"delay {delay:g} ms set by config")
    elif max_batch == 1:
        delay = 0.0
        why.append("delay 0")
    else:
        solo = measured.get(1)
        delay = default_delay_ms if solo is None else min(default_delay_ms, solo)
        why.append(f"delay {delay:.2f} ms = min({default_delay_ms:g} ms, one image alone)")
    return BatchPlan(
        costs_ms=dict(sorted(measured.items())),
        buckets=buckets,
        max_batch_size=max_batch,
        max_delay_ms=delay,
        take=tuple(range(1, max_batch + 1)) if max_batch_size is not None else take_table(measured, buckets),
        reason="; ".join(why),
    )


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence (the middle of an odd count, the mean of the two middles)."""
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0
