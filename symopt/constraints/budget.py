r"""Budgets for the sparsity and rank kinds: keep exactly ``k`` atoms alive by adapting λ.

An *atom* is one term of the induced norm: an entry's magnitude ($ℓ_1$), a group's norm (group
lasso), a singular value (nuclear norm). A budget ``k`` (``max_nonzero`` / ``density``,
``max_groups``, ``target_rank``) asks for the point of the regularisation path whose support has
``k`` atoms; symopt finds its λ during training, with no extra call in the loop.

**Controller (why this one).** One proximal-gradient step from θ with step ``t`` keeps exactly the
atoms whose *score* $s = \mathrm{atoms}(θ - t∇ℓ(θ)) / t$ exceeds λ. So the λ that keeps ``k`` atoms lies
between the k-th and (k+1)-th largest scores; after each optimizer step log λ moves a fraction
``rate`` of the way to the log of their midpoint (the strength policy combines the observations of one
step, so an L-BFGS closure sees one λ).

* It reacts at once: the gradient half of the score sees an atom that should leave the support
  immediately, whereas DCS shrinks that atom only geometrically, so a controller that *counts*
  non-zeros lags λ by thousands of steps and overshoots.
* It cannot stall: when more than k atoms are predicted alive, both scores exceed λ and λ rises;
  when fewer, both lie below and λ falls. λ is at rest only when the predicted support has exactly k
  atoms; at a converged point that is the true support, so on a convex loss λ ends inside the
  interval of the path where the solution has k atoms.
* $t = \mathrm{spread} · \operatorname{mean}(k\ \text{largest atoms of }θ) / λ$ puts both halves of the score on one scale. Only
  the scale matters, so off a ramp, above 16k atoms, the mean comes from a strided sample
  (`mean_of_largest`); on a ramp the trimmed decay needs the k-th atom exactly, and the same
  selection gives the exact mean.

**One reading in ``READ_EVERY`` (4) steps.** Reading the atoms (the k-th largest of θ and of the scores)
costs several passes over the tensor (with torch's ``topk``, as much as the step itself at 512×512 with k
a tenth of it; NumPy's linear-time selection, `leading`, costs a seventh of that); λ
moves only a fraction ``rate`` per step anyway. So the controller reads on one step in four (and on
every step while λ is unknown, or when the gradients are taken inside a bound optimizer's step, as an
L-BFGS closure is), and each reading moves log λ by the compounded rate of the steps since the last,
$1 - (1 - \mathrm{rate})^4$, the same time constant. A ramp of at least ``LONG_RAMP`` steps reads on one
step in ``LONG_RAMP_READ_EVERY`` (8): at least 128 readings either way, and on the digits MLP (a ramp of
1495 steps) a reading step was a third of the budget's cost over fixed λ, for the same accuracy at
either cadence (benchmarks/RESULTS.md).

Before the first observation λ is the ``strength`` given, or, if none, ``START`` (a tenth) of the
midpoint of the k-th and (k+1)-th largest gradient atoms at the first backward pass (about the λ at
which k atoms would leave 0). Starting low is deliberate — continuation from the dense end of the
path: λ then rises (by at most ``(1 + 1/spread)^rate`` per step), atoms leave the support in path
order, and none is pushed to the factors' absorbing point $u = v = 0$ by a λ that is too high
early on (an atom there cannot re-enter when λ comes back down).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

from .state import HostCopies

SPREAD = 2.0
RATE = 0.1
START = 0.1
READ_EVERY = 4
# ... and on a ramp of at least LONG_RAMP steps, one in LONG_RAMP_READ_EVERY (still 128 readings or more)
LONG_RAMP_READ_EVERY = 8
LONG_RAMP = 128 * LONG_RAMP_READ_EVERY
# On a ramp that lands on the way (`BudgetStrength.lands_early`), a reading lands the atoms ranked beyond
# this multiple of the scheduled count
LAND_BEYOND = 1.5


def check_budget(value: object, what: str, owner: str) -> int | None:
    """``value`` as an int >= 1 (or None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {what} must be an int >= 1, got {value!r}")
    return int(value)


def check_density(value: object, owner: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{owner}: density must be a fraction in (0, 1), e.g. density=0.1, got {value!r}")
    return float(value)


def entry_budget(max_nonzero: object, density: object, owner: str) -> tuple[str, float] | None:
    """The budget of an elementwise kind from ``max_nonzero=k`` or ``density=f`` (one of them, or none)."""
    k = check_budget(max_nonzero, "max_nonzero", owner)
    fraction = check_density(density, owner)
    if k is not None and fraction is not None:
        raise ValueError(f"{owner}: give max_nonzero or density, not both")
    return ("count", k) if k is not None else ("density", fraction) if fraction is not None else None


# The schedule's (start, end) as fractions of total_steps when none is given: a warm-up for the features, then
# the ramp, landing with a quarter of training left to fine-tune (the verbs' and kinds' default `ramp`)
DEFAULT_RAMP = (0.1, 0.75)


def check_total_steps(total_steps: object, ramp: object, owner: str) -> tuple[int, float, float] | None:
    """``(total_steps, ramp start, ramp end)`` as checked values, or None without ``total_steps`` (where a ramp
    other than the default is refused: it places a schedule that only ``total_steps`` makes)."""
    if total_steps is None:
        if ramp != DEFAULT_RAMP and ramp != list(DEFAULT_RAMP):
            raise ValueError(f"{owner}: ramp={ramp!r} places a schedule within total_steps, and none is given; give "
                             "total_steps= (the optimizer steps until training ends) too, or drop ramp")
        return None
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise ValueError(f"{owner}: total_steps must be an int >= 1 (the steps until training ends), "
                         f"got {total_steps!r}")
    if (not isinstance(ramp, tuple) or len(ramp) != 2
            or not all(isinstance(r, numbers.Real) and not isinstance(r, bool) for r in ramp)
            or not 0.0 <= ramp[0] < ramp[1] <= 1.0):
        raise ValueError(f"{owner}: ramp must be (start, end) fractions of total_steps with 0 <= start < end <= 1, "
                         f"got {ramp!r}; the budget lands at the end of the ramp, which cannot be after "
                         "total_steps")
    return int(total_steps), float(ramp[0]), float(ramp[1])


def check_land_on_the_way(value: object, schedule: tuple[int, float, float] | None, can: bool, owner: str) -> bool:
    """Whether a budget's ramp lands atoms on the way (`BudgetStrength.lands_early`): ``value`` checked, or,
    for None, ``can`` (the kind's default: its atoms own their factors' entries). ``schedule`` is the
    budget's (None: no budget with ``total_steps``, where the keyword has nothing to say)."""
    if value is None:
        return can
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: land_on_the_way must be True, False or None (the kind's default), "
                        f"got {type(value).__name__}")
    if schedule is None:
        raise ValueError(f"{owner}: land_on_the_way says how a budget's ramp lands; give total_steps= and a budget "
                         "(max_nonzero=, density=, max_groups=, max_heads=), or drop it")
    if value and not can:
        raise ValueError(f"{owner}: this kind lands its budget at the end of the ramp only (a rank budget's atoms, "
                         "singular directions, mix every entry of its factors); drop land_on_the_way")
    return value


def scheduled_count(step: int, atoms: int, k: int, start: int, end: int) -> int:
    r"""The atoms kept at ``step`` on the way from all ``atoms`` to the budget ``k``: the cubic schedule
    of gradual magnitude pruning (Zhu & Gupta, 2017), $k + (\mathrm{atoms} - k)(1 - τ)^3$ with τ the fraction of
    the ramp ``[start, end)`` done. It removes atoms fast while many are redundant and slowly near the
    budget, where each one costs accuracy; at least $k + 1$ before ``end``, ``k`` from then on."""
    if step >= end:
        return k
    tau = max(0.0, (step - start) / max(end - start, 1))
    return min(atoms - 1, max(k + 1, round(k + (atoms - k) * (1.0 - tau) ** 3)))


def check_rate(value: object, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{owner}: adapt_rate must be in (0, 1], got {value!r}")
    return float(value)


_SAMPLE = 4096  # entries read to bracket the k-th largest (see leading)


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def _cpu_array(flat: Tensor) -> np.ndarray | None:
    """A CPU tensor of float32 or float64 as a NumPy array sharing its memory (None for any other: a
    GPU's, a half precision's), for the selections NumPy does in linear time (``np.partition``), which
    torch's CPU kernels do not: `leading`, `sampled_kth`."""
    if flat.device.type != "cpu" or flat.dtype not in _NUMPY_FLOATS:
        return None
    return flat.detach().numpy()


def _strided_sample(flat: Tensor) -> Tensor | None:
    """About ``_SAMPLE`` entries of a 1-d tensor at one stride, where it has more than ``4 · _SAMPLE``
    (their quantiles bracket, or stand for, the whole tensor's: `leading`, `sampled_kth`,
    `mean_of_largest`); None for a smaller tensor, whose own selections are exact and cheap."""
    n = flat.numel()
    return flat[:: n // _SAMPLE] if n > 4 * _SAMPLE else None


def leading(values: Tensor, k: int) -> tuple[float, float, float]:
    """``(sum of the k largest, k-th largest, (k+1)-th largest)`` of a 1-d tensor with more than k
    entries, exactly.

    A budget needs these at each of its readings, of tensors with up to millions of entries and k a
    tenth of them, where ``torch.topk(k + 1)`` costs more than the training step itself (3 ms of a 6 ms
    step at 512×512, k = 26k, measured). So the k-th value is first bracketed from a strided sample of
    ``_SAMPLE`` entries (its quantile ± 4 standard errors), the entries above the bracket are summed,
    and only the few inside it are searched (a selection, not a sort): a few passes over the tensor. When the bracket misses (the
    sample is not representative, or ties sit on its edge) the full selection answers: never wrong,
    only slower.

    Each operator counts: on a small layer a reading is dispatch-bound (about 10 µs an operator inside
    a training step, whatever its size), so the selection is written in as few of them as it can be.

    On the CPU, float32 and float64 go to NumPy's ``partition`` instead (`_cpu_array`; among the positive
    entries alone where some are 0, `_leading_in_numpy`): one linear-time selection (introselect) of the
    k-th largest, whose right part is the k largest and whose left part's
    maximum is the (k+1)-th, exactly, with no bracket to miss; 2–8× faster than the bracket at every size
    from 2.5k to 1M entries on a 2-core Xeon (benchmarks/RESULTS.md). Above ``BAND_FROM`` positive entries the
    same sample's bracket goes first in NumPy too, with ``np.partition`` inside it (`_leading_in_band`: 0.3–0.7× a
    full partition's time from 8k to 262k entries on an AMD EPYC), unless NumPy's partition is a SIMD selection on
    this CPU (`SIMD_PARTITION`), which beats the bracket. torch has no linear-time selection
    on the CPU (``kthvalue`` and ``topk`` cost more than the bracket), and on a GPU the bracket stays.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    array = _cpu_array(flat)
    if array is not None:
        return _leading_in_numpy(array, k)
    if 2 * k > n:
        # Most entries are kept (early in a ramp, the count is near n): select the n − k smallest instead,
        # the negated tensor's n − k largest, and take the sum of the k largest as the total minus theirs.
        # A selection of k near n (a topk of nearly everything) cost 27 ms at n = 262k.
        low_sum, low_last, low_next = leading(-flat, n - k)
        return float(flat.sum(dtype=torch.float64)) + low_sum, -low_next, -low_last
    count, above_sum, band = 0, 0.0, flat
    sample = _strided_sample(flat)
    if sample is not None:
        m = sample.numel()
        low_rank, high_rank = _bracket_ranks(k, n, m)
        low_rank = min(m - 1, low_rank)
        # both edges from one selection of the sample's largest (two kthvalue calls cost twice as much)
        edges = torch.topk(sample, low_rank + 1).values
        lower_edge = edges[low_rank]
        if high_rank < 1:  # a small k: no upper edge (the sample's top would leave more than k above it)
            band = flat[flat > lower_edge]
        else:
            # Above the upper edge only the count and the sum are needed, and neither needs the entries
            # gathered: sum_{x > e} x = sum relu(x − e) + count·e. Only the band between the edges (a few
            # percent of the entries) is gathered; a boolean gather of every candidate above the lower
            # edge was half of a reading (0.43 ms at n = 262k, k = 26k, measured).
            upper_edge = edges[high_rank]
            above = flat > upper_edge
            # (the scalars a step needs go to the host together: on a GPU each read is a synchronisation)
            count, relu_sum, edge = _to_host(torch.count_nonzero(above), (flat - upper_edge).clamp_(min=0).sum(),
                                             upper_edge)
            count = int(count)
            above_sum = relu_sum + count * edge if count else 0.0
            band = flat[(flat > lower_edge) ^ above]  # the upper edge is not below the lower: above ⊂ flat > lower
        if not 1 <= k - count < band.numel():  # the bracket missed: select from everything
            count, above_sum, band = 0, 0.0, flat
    band_sum, kth_value, after = _largest_and_next(band, k - count)
    return above_sum + band_sum, kth_value, after


def _bracket_ranks(k: int, n: int, m: int) -> tuple[int, int]:
    """The ranks in a sample of ``m`` of ``n`` entries (0: the sample's largest) of the edges that bracket the k-th
    largest entry: its rank in the sample ± 4 standard errors and 4, the lower edge's rounded up, the upper's down
    (unclamped: below 1 the upper edge would leave more than k above it, from ``m - 1`` on there is no lower one).
    `leading`'s torch bracket and `_leading_in_band`'s NumPy one."""
    at, margin = k * m / n, 4.0 * math.sqrt(m * (k / n) * (1 - k / n)) + 4.0
    return int(math.ceil(at + margin)), int(at - margin)


def _leading_in_numpy(array: np.ndarray, k: int, kth_only: bool = False) -> tuple[float, float, float]:
    """`leading` of a 1-d NumPy array: ``np.partition`` of its positive entries where some are not.

    A budget's atoms and scores are magnitudes, and on a ramp that lands on the way many of them are
    exactly 0 (a landed atom's, and its score: no gradient). NumPy's introselect slows down on so many
    equal values: 7.4 ms at 65k entries half of them 0, against 0.4 ms with none (numpy 2.4, this
    project's 2-core Xeon; benchmarks/RESULTS.md). So where some entries are not positive, the positive
    ones are selected alone (one comparison and one gather, ~40 µs at 65k), and where fewer than k + 1 are
    positive the rest, all 0, complete the answer; an array holding negative numbers or NaN takes the
    plain selection over everything, whatever it costs. With ``kth_only``, the k-th largest alone (the sum and
    the next value are not computed: NaN)."""
    n = array.shape[0]
    positive = array > 0
    count = int(np.count_nonzero(positive))
    if count < n:
        chosen = array[positive]
        if count > k:
            return _leading_by_partition(chosen, k, kth_only, positive=True)
        if not (array[~positive] == 0).all():  # (negatives or NaN among the rest: no shortcut)
            return _leading_by_partition(array, k, kth_only)
        # the k largest are the `count` positive entries and k − count zeros; the next is a zero too
        kth = float(chosen.min()) if count == k else 0.0
        if kth_only:
            return math.nan, kth, math.nan
        return (float(chosen.sum(dtype=np.float64)) if count else 0.0), kth, 0.0
    return _leading_by_partition(array, k, kth_only, positive=True)


def _leading_by_partition(array: np.ndarray, k: int, kth_only: bool = False,
                          positive: bool = False) -> tuple[float, float, float]:
    """`_leading_in_numpy`'s selection: through `_leading_in_band` where every entry is ``positive`` (so none is
    NaN), there are more than ``BAND_FROM`` and NumPy's partition is not a SIMD one (`SIMD_PARTITION`), else (or
    where its bracket misses) one ``np.partition``."""
    n = array.shape[0]
    if positive and n > BAND_FROM and not SIMD_PARTITION:
        found = _leading_in_band(array, k, kth_only)
        if found is not None:
            return found
    part = np.partition(array, n - k)  # (the k largest to the right of position n − k, in any order)
    if kth_only:
        return math.nan, float(part[n - k]), math.nan
    return float(part[n - k:].sum(dtype=np.float64)), float(part[n - k]), float(part[: n - k].max())


# A NumPy selection among more than this many positive entries goes through a sample's bracket (`_leading_in_band`) ...
BAND_FROM = 2 * _SAMPLE


def _numpy_partitions_by_simd() -> bool:
    """Whether NumPy's ``np.partition`` of float32 / float64 runs x86-simd-sort's AVX-512 selection on this CPU
    (NumPy 2 dispatches it where the CPU has the AVX512_SKX group). Measured on this project's machines: on an Intel
    Xeon with AVX-512, one partition of the digits MLP's 65k-entry ramp atoms took 90–340 µs against the bracket's
    140–470 µs, and of its 16k-entry ones 25–85 against 53–155 (the same k-th values; the sums closer, since the
    bracket's rounds in float32); on the AMD EPYC of earlier sessions a partition of 65k entries took 400–500 µs and the bracket 0.39–0.44×
    as long (benchmarks/RESULTS.md), and on the same Xeon with NumPy held to AVX2 (``NPY_ENABLE_CPU_FEATURES`` up to
    AVX2) a partition of 65k |normal| draws took 353 µs against the bracket's 178. So a CPU without AVX-512 keeps the
    bracket. NumPy's own runtime features decide, so the environment variables that limit them do too."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # pragma: no cover - NumPy 1 names the module numpy.core
        return False
    return bool(__cpu_features__.get("AVX512_SKX", False))


# ... unless NumPy's own selection is a SIMD one, which beats the bracket at every size (the CPU decides, once: the same
# machine always takes the same path, so a run repeats to the bit)
SIMD_PARTITION = _numpy_partitions_by_simd()


def _leading_in_band(array: np.ndarray, k: int, kth_only: bool) -> tuple[float, float, float] | None:
    """`_leading_by_partition` of a 1-d array of positive entries by the bracket `leading` uses on torch tensors:
    the k-th largest is bracketed by two quantiles of a strided sample of ``_SAMPLE`` entries (its rank ± 4 standard
    errors), the entries above the upper edge are only counted and summed, and ``np.partition`` selects among the
    few inside the bracket. None where the bracket misses (fewer than k entries above its lower edge, or k or more
    above its upper one: the caller's full selection answers). Why: a reading selects twice in every budgeted layer,
    and one ``np.partition`` of 65k entries (a 256 × 256 layer) cost 418 µs, the bracket 60-100 µs (this project's
    AMD EPYC, benchmarks/RESULTS.md, fifty-third session)."""
    n = array.shape[0]
    sample = array[:: n // _SAMPLE]
    m = sample.shape[0]
    # (a small k has no upper edge, which would leave more than k above it, and a k near n no lower one: the band is
    # then everything above the lower edge, or everything up to the upper)
    low_rank, high_rank = _bracket_ranks(k, n, m)
    lower_at, upper_at = (m - 1 - low_rank if low_rank < m - 1 else None), (m - 1 - high_rank if high_rank >= 1 else None)
    if lower_at is None and upper_at is None:
        return None
    edges = np.partition(sample, [i for i in (lower_at, upper_at) if i is not None])
    count, above_sum, inside = 0, 0.0, None
    if upper_at is not None:
        upper = edges[upper_at]
        above = array > upper
        count = int(np.count_nonzero(above))
        # (Σ_{x > e} x = Σ max(x − e, 0) + count · e: no gather of the entries above, which cost 260 µs of 65k
        # entries at k = n/2, the sum of the differences 70 µs)
        above_sum = math.nan if kth_only else float(np.maximum(array - upper, 0).sum(dtype=np.float64)) + count * float(
            upper)
        inside = ~above
    if lower_at is not None:
        inside = array > edges[lower_at] if inside is None else inside & (array > edges[lower_at])
    band = array[inside]
    need, size = k - count, band.shape[0]
    if not 1 <= need < size:  # (the k-th or the (k+1)-th largest outside the band)
        return None
    part = np.partition(band, size - need)
    if kth_only:
        return math.nan, float(part[size - need]), math.nan
    return above_sum + float(part[size - need:].sum(dtype=np.float64)), float(part[size - need]), float(
        part[: size - need].max())


def _largest_and_next(values: Tensor, need: int) -> list[float]:
    """``(sum of the need largest, need-th largest, (need+1)-th largest)`` of a 1-d tensor with more than
    ``need`` ≥ 1 entries: the need + 1 largest unsorted (sorting them cost 5× more at thousands), whose
    two smallest are the last two wanted, in one transfer."""
    top = torch.topk(values, need + 1, sorted=False).values
    after, kth = torch.topk(top, 2, largest=False).values  # (ascending: the (need+1)-th, then the need-th)
    return _to_host(top.sum(dtype=torch.float64) - after, kth, after)


def below(values: Tensor, edge: float, dtype: torch.dtype) -> Tensor:
    """1.0 where ``values < edge``, else 0.0 (also where a value is NaN), in ``dtype``: a reading's mask of
    the atoms outside the count's largest, which the trimmed decay multiplies by. On the CPU (float32,
    float64) through NumPy, whose comparison and conversion cost 14 µs at 65k entries where torch's
    took 100 µs (a bool tensor, then a float one) on this project's 2-core Xeon."""
    array = _cpu_array(values)
    if array is None or dtype not in _NUMPY_FLOATS:
        return (values < edge).to(dtype)
    return torch.from_numpy(np.less(array, edge).astype(_NUMPY_FLOATS[dtype]))


def at_or_above(values: Tensor, edge: float) -> Tensor:
    """``values >= edge`` as a bool tensor (False where a value is NaN), on the CPU through NumPy (see
    `below`): a reading's mask of the atoms a landing on the way keeps."""
    array = _cpu_array(values)
    return values >= edge if array is None else torch.from_numpy(np.greater_equal(array, edge))


def sampled_kth(values: Tensor, k: int) -> float:
    """About the k-th largest of a 1-d tensor with more than k entries: exact where the tensor has at
    most ``4 · _SAMPLE`` entries, else the same rank's quantile of `leading`'s strided
    sample, so that about k entries are at or above it (a standard error of √(k(n − k)/4096)
    entries: 2% of k for a third of 262k entries, 7% for a twentieth). One selection among 4096
    entries where an exact k-th value reads the tensor several times (0.7 ms at n = 262k on this
    CPU), for a landing on the way, whose count is a rule of thumb anyway."""
    flat = values.reshape(-1)
    n = flat.numel()
    sample = _strided_sample(flat)
    if sample is None:
        # (one selection, without the sum and the next value `leading` adds)
        array = _cpu_array(flat)
        return _leading_in_numpy(array, k, kth_only=True)[1] if array is not None else float(flat.kthvalue(n - k + 1).values)
    m = sample.numel()
    rank = max(1, min(m, round(k * m / n)))  # (1: the sample's largest)
    return float(sample.kthvalue(m - rank + 1).values)


def mean_of_largest(values: Tensor, k: int) -> float:
    """About the mean of the k largest entries of a 1-d tensor with more than k entries: exact where it
    has at most ``4 · _SAMPLE`` entries (`leading`), else the mean of the same share of `leading`'s strided
    sample (one selection among 4096 entries instead of a reading's several passes over the tensor), and
    exact again where that sample's share is all zero. A budget's step t takes its scale from it and
    nothing else (`budget_target`): for any t > 0 the midpoint of the scores keeps exactly k atoms in a
    proximal step of that t, and at a stationary point the same k atoms for every t, so an estimate of
    the scale moves λ's path a little and the budget not at all."""
    flat = values.reshape(-1)
    sample = _strided_sample(flat)
    if sample is not None:
        share = max(1, min(sample.numel(), round(k * sample.numel() / flat.numel())))
        mean = float(torch.topk(sample, share, sorted=False).values.mean(dtype=torch.float64))
        if mean > 0:
            return mean
    return leading(flat, k)[0] / k


def _to_host(*scalars: Tensor) -> list[float]:
    """0-d tensors as Python floats, in one transfer (float64: every float32 value is kept exactly). On a
    CPU there is no transfer to save, and one read each takes fewer operators than a stack."""
    if scalars[0].device.type == "cpu":
        return [float(t) for t in scalars]
    return torch.stack([t.to(torch.float64) for t in scalars]).tolist()


def split_point(scores: Tensor, k: int) -> float:
    """Midpoint of the k-th and (k+1)-th largest ``scores`` (a 1-d tensor with more than k entries).

    When fewer than k + 1 scores are positive (a one-sided norm: NonNegative's atoms are 0 wherever the
    gradient pushes an entry down), every λ below the smallest positive score keeps them all and the
    budget does not bind yet: half that score, the small λ of the dense end of the path (0 if no score
    is positive)."""
    flat = scores.reshape(-1)
    _, kth, after = leading(flat, k)
    mid = 0.5 * (kth + after)
    if mid > 0:
        return mid
    positive = flat[flat > 0]
    return 0.5 * float(positive.min()) if positive.numel() else 0.0


class BudgetController(HostCopies):
    """λ for a budget: log λ is a buffer (saved in ``state_dict``); see the module docstring.

    Buffers: ``log_strength`` (−inf until λ is known), ``updates`` (how many steps moved it).
    """

    def __init__(self, initial: float | None, rate: float = RATE) -> None:
        super().__init__()
        self.rate = rate
        start = math.log(initial) if initial is not None else -math.inf
        self.register_buffer("log_strength", torch.tensor(start, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.float64))
        # (log λ is read through a host copy, `HostCopies`: λ is asked on every step, as the optimizer
        # groups' weight decay)

    def log_value(self) -> float:
        """log λ (−inf before it is known), from the host copy."""
        return self.host("log_strength")

    def value(self) -> float:
        """Current λ (0 before it is known)."""
        return math.exp(self.log_value())

    def update(self, target: float, steps: int = 1) -> None:
        """Move log λ toward log ``target`` (the midpoint λ the point asks for): the fraction ``rate``
        of the way per step, compounded over the ``steps`` since the last reading."""
        log = self.log_value()
        if not math.isfinite(log):
            self.write("log_strength", math.log(START * target))
        else:
            move = max(-1.0, min(1.0, math.log(target) - log))  # at most a factor e per reading
            fraction = self.rate if steps == 1 else 1.0 - (1.0 - self.rate) ** steps  # (1 − (1 − r) ≠ r in floats)
            self.write("log_strength", log + fraction * move)
        self.updates += 1

    def forget(self) -> None:
        """λ back to unknown (log λ = −inf): a landed budget decays nothing."""
        self.write("log_strength", -math.inf)


def budget_target(top_atoms, value: Tensor, grad: Tensor, k: int, strength: float,
                  size: float | None = None) -> float:
    """The midpoint λ for budget ``k`` at ``value`` with loss gradient ``grad`` (see module docstring).

    ``top_atoms(tensor, count, reading)`` returns atom sizes of a tensor as λ sees them (|entries|, group norms
    over their weights, σ: the constraint's ``top_dual_atoms``), at least its ``count`` largest. Only
    the k + 1 largest are needed, so a rank budget computes the leading singular values of
    $θ - t∇ℓ$, not its full SVD; the selection among them is [`leading`][symopt.constraints.budget.leading]'s.
    ``size``, the mean of the k largest atoms of ``value``, is computed here unless the caller has it.
    """
    value, grad = value.detach(), grad.detach()
    if size is None:
        size = leading(top_atoms(value, k + 1, "point"), k)[0] / k
    if strength <= 0 or size == 0.0:
        return split_point(top_atoms(-grad, k + 1, "score"), k)  # the prox score of a zero point: atoms(0 − t·∇ℓ) / t
    step = SPREAD * size / strength
    # atoms are norms, so atoms(θ − t∇ℓ)/t = atoms(θ/t − ∇ℓ): the same score without forming t·∇ℓ, which
    # overflowed float32 when λ was tiny (t ≈ 1e30: an SVD of Inf on a 256×64 rank budget)
    return split_point(top_atoms(value / step - grad, k + 1, "score"), k)
