"""Triton helpers for the entmax threshold tau, shared by the row and attention kernels.

Work in z = (alpha - 1) x. With d = [z - t]_+ and k = 1 / (alpha - 1), f(t) = sum_j d_j^k - 1 is
decreasing in t and tau is its root. One pass at a trial t accumulates per row

    count = #{d > 0},  s1, s2 = sum d, sum d^2           (alpha = 1.5 and 2: closed forms)
    s1, s2 = sum d^(k-1), sum d^k                       (any other alpha: a Newton step)
    gap = min_j |z_j - t|                               (how far t may move with no z crossing it)

and ``threshold_step`` turns them into the next trial. For alpha = 1.5 the next t solves
sum_{d>0} (d - delta)^2 = 1 on the support at t; for alpha = 2, sum_{d>0} (d - delta) = 1. Such a
step is exact when the support at t + delta is the support at t, which the pass proves in two
ways: the step is shorter than gap (no z lies between t and t + delta), or the next pass finds the
same count (it may over- or undershoot before that). Work relative to the row max, so that
|t| <= 1. The stats at t need only the entries with z > t, so a pass may skip every tile whose
maximum is <= t, whatever t is; gap is then cut at t minus the largest z it skipped.

ALPHA_MODE: 1 -> alpha = 1.5, 2 -> alpha = 2, 0 -> any other alpha (Newton kept inside a bracket).
"""

import os

import triton
import triton.language as tl

# Kernels run by Triton's interpreter (no GPU): it runs no inline assembly, and a reduction with a
# combine function entry by entry
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def entmax_power(d, k, ALPHA_MODE: tl.constexpr):
    """d^(1/(alpha-1)) for d >= 0 (0 at d = 0)."""
    if ALPHA_MODE == 1:
        return d * d
    elif ALPHA_MODE == 2:
        return d
    else:
        return tl.where(d > 0, tl.exp2(k * tl.log2(tl.maximum(d, 1e-30))), 0.0)


@triton.jit
def p_and_u(x, k, ALPHA_MODE: tl.constexpr):
    """p = d^k and u = d^(k-1) on the support (0 off it), d = [x]_+, k = 1 / (alpha - 1):
    the entmax weights and u = p^(2 - alpha), the factor of their gradient."""
    d = tl.maximum(x, 0.0)
    if ALPHA_MODE == 1:
        return d * d, d
    elif ALPHA_MODE == 2:
        return d, (d > 0).to(tl.float32)
    else:
        # d^(k-1) from one log and one exp, d^k = d d^(k-1) (a division cost as much again)
        u = tl.where(d > 0, tl.exp2((k - 1.0) * tl.log2(tl.maximum(d, 1e-30))), 0.0)
        return d * u, u


@triton.jit
def threshold_terms(x, ALPHA_MODE: tl.constexpr, k):
    """Elementwise terms of (count, s1, s2, gap) at x = z - t (see the module docstring): the row
    sums of the first three and the row min of the last make the stats. k broadcasts against x
    (a scalar, or one value per row as a column)."""
    p, u = p_and_u(x, k, ALPHA_MODE)
    live = (tl.maximum(x, 0.0) > 0).to(tl.float32)
    if ALPHA_MODE == 2:
        return live, p, u, tl.abs(x)  # s1 = sum d, s2 = count
    else:
        return live, u, p, tl.abs(x)  # s1 = sum d^(k-1), s2 = sum d^k


@triton.jit
def _sums_and_min(c0, c1, c2, g, d0, d1, d2, h):
    return c0 + d0, c1 + d1, c2 + d2, tl.minimum(g, h)


@triton.jit
def reduce_stats(c0, c1, c2, c3):
    """Row sums of c0, c1, c2 and row min of c3 (2-D), in one reduction: one exchange between
    warps instead of four (four reductions in the interpreter)."""
    if INTERPRETED:
        return tl.sum(c0, 1), tl.sum(c1, 1), tl.sum(c2, 1), tl.min(c3, 1)
    return tl.reduce((c0, c1, c2, c3), 1, _sums_and_min)


@triton.jit
def threshold_stats(x, ALPHA_MODE: tl.constexpr, k):
    """Per-row (count, s1, s2, gap) of a 2-D tile of x = z - t."""
    c0, c1, c2, c3 = threshold_terms(x, ALPHA_MODE, k)
    return reduce_stats(c0, c1, c2, c3)


@triton.jit
def entmax15_step(t, count, s1, s2):
    """alpha = 1.5's update from the stats at t (``threshold_step``): returns (delta, closed),
    closed where the closed form applies (else the model's step)."""
    safe = tl.where(count > 0, count, 1.0)
    disc = s1 * s1 - count * (s2 - 1.0)
    closed = disc >= 0
    s1_safe = tl.where(s1 > 0, s1, 1.0)
    rho = count * s2 / (2.0 * s1_safe * s1_safe)
    log_f = tl.log(tl.maximum(s2, 1.0))
    g = 1.0 / tl.maximum(1.0 - rho, 1e-3)
    model = tl.where(rho < 0.999, g * (1.0 - tl.exp(-log_f / g)), log_f) * s2 / (2.0 * s1_safe)
    delta = tl.where(closed, (s1 - tl.sqrt(tl.maximum(disc, 0.0))) / safe,
                     tl.minimum(model, -1.0 / tl.sqrt(safe) - t))
    return delta, closed


@triton.jit
def threshold_step(t, lo, hi, count, s1, s2, gap, prev, k, ALPHA_MODE: tl.constexpr):
    """One update from the stats at t: returns (t, lo, hi, prev, converged) per row.

    ``prev`` carries the support count of the last pass when that pass took an exact closed-form
    step (else -1): an unchanged count then proves the current t is tau; so does a closed-form step
    shorter than ``gap``, which then ends at tau. For alpha = 1.5 the closed form needs
    s1^2 >= n (s2 - 1), that is F = s2 > 1 and t < tau. Otherwise (too wide a support) the step
    solves F(t + delta) = 1 for a model F = C (a - t)^g fit to F, F' = -2 s1 and F'' = 2 n at t:
    g = 1 / (1 - rho), rho = n s2 / (2 s1^2) (>= 1/2), and F = C exp(-2 s1 t / s2) as rho -> 1.
    g = 2 is Newton on sqrt(F), safe from the left; as g >= 2 the step is at least that long, and
    it is cut at -1/sqrt(n) >= tau (sum (z - tau)^2 = 1 over at most n entries, each z <= 0).
    Any other alpha: a Newton step on g(t) = (sum d^k)^(1/k) - 1, nearly linear in t and convex
    for alpha <= 2 (a k-norm), so it converges from the left in a few steps:
    delta = (F - F^(2 - alpha)) / sum d^(k-1), F = sum d^k. It is kept inside the bracket [lo, hi]
    (f(lo) >= 0 >= f(hi)), bisecting when it would leave it, and ends when the step is below 1e-6.
    Rows with no admissible entry (count = 0, t = +inf) are done.
    """
    has = count > 0
    safe = tl.where(has, count, 1.0)
    if ALPHA_MODE == 1:
        delta, closed = entmax15_step(t, count, s1, s2)
        new_t = t + delta
        done = (count == prev) | (tl.abs(delta) <= 1e-7) | (closed & (tl.abs(delta) < gap))
        prev = tl.where(closed, count, -1.0)
    elif ALPHA_MODE == 2:
        delta = (s1 - 1.0) / safe
        new_t = t + delta
        done = (count == prev) | (tl.abs(delta) <= 1e-7) | (tl.abs(delta) < gap)
        prev = count
    else:
        f = s2 - 1.0
        lo = tl.where(f >= 0, t, lo)
        hi = tl.where(f < 0, t, hi)
        power = tl.exp2((1.0 - 1.0 / k) * tl.log2(tl.maximum(s2, 1e-30)))
        newton = t + (s2 - power) / tl.where(s1 > 0, s1, 1.0)
        inside = (newton >= lo) & (newton < hi)
        # A step this small ends it, inside the bracket or not: once f(t) is at rounding level its
        # sign, and so the side of the bracket t lands on, is noise (bisecting then only halves an
        # old bracket, one pass per halving).
        small = tl.abs(newton - t) <= 1e-6
        new_t = tl.where(inside, newton, tl.where(small, t, 0.5 * (lo + hi)))
        done = small | (tl.abs(new_t - t) <= 1e-6)
    done = done | (~has)
    new_t = tl.where(has, new_t, t)
    return new_t, lo, hi, prev, done
