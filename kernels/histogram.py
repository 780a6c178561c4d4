"""Histogram initialisation of the entmax threshold tau, built during the dense sweep.

With z = (alpha - 1)(s - m) (max 0) and f(t) = sum_j [z_j - t]_+^k - 1, k = 1 / (alpha - 1),
tau lies in [-1, 0). The sweep counts, per row, the scores in BINS bins of width 1 / BINS in z
below the row max, on a fixed grid: with u = c s, c = BINS (alpha - 1), bin j holds the scores
with round(top - u) = j, top = round(c m). While the running max grows, the grid stays and the
counts move down by the whole bins top moved, so the final counts are exact for the final max.

Placing each bin's members at its lower (upper) edge gives a function below (above) f wherever t
is above the lowest bin, so tau lies between their roots, at most one bin apart; the start is the
root with the members at the bin midpoints, found on the prefix of bins whose members lie above
it: a closed form for alpha = 1.5 (sum c (e - t)^2 = 1) and 2 (sum c (e - t) = 1), Newton steps
on (sum c (e - t)^k)^(1/k) - 1 (convex, so they approach from the left) for any other alpha.
The counting costs about ten instructions per score (``attention_fwd.HISTOGRAM_MODES`` says
where that pays)."""

import triton
import triton.language as tl

BINS = tl.constexpr(8)  # 8-bit fields of one int64 word: at most 255 scores per row per update
NEWTON_STEPS = tl.constexpr(4)  # of the start for alpha other than 1.5 and 2
MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: x + MAGIC holds round(x) in its low bits, |x| < 2^22


@triton.jit
def _spread(x):
    """The 4 bytes of x (0 <= x < 2^32, int64) into the 4 16-bit fields of an int64."""
    x = (x | (x << 16)) & 0x0000FFFF0000FFFF
    return (x | (x << 8)) & 0x00FF00FF00FF00FF


@triton.jit
def grid_top(m, c):
    """round(c m): the grid index of the top bin for the row max m."""
    return tl.floor(m * c + 0.5)


@triton.jit
def bin_words(s, top, c):
    """Per score, 1 << 8 j for its bin j: round(top - c s) = j < BINS, else 0 (top = round(c m),
    so c s <= c m < top + 0.5 gives j >= 0); top and c broadcast against s. The bin is read from
    the low mantissa bits of top - c s + MAGIC. A sum of at most 255 words holds 8-bit counts."""
    y = s * -c + (top + MAGIC)
    inside = y < MAGIC + BINS - 0.5
    shift = ((y.to(tl.int32, bitcast=True) << 3) & 63).to(tl.int64)
    return tl.where(inside, tl.full([], 1, tl.int64) << shift, 0)


@triton.jit
def add_counts(lo, hi, packed):
    """Add 8-bit counts (a sum of ``bin_words``) to the 16-bit fields of lo (bins 0-3) and hi."""
    return lo + _spread(packed & 0xFFFFFFFF), hi + _spread((packed >> 32) & 0xFFFFFFFF)


@triton.jit
def histogram_update(lo, hi, top, s, s_max, m, c):
    """Add the scores s (rows x a x b, a b <= 255, -inf where excluded; row max s_max) to the
    counts (s comes in the 3-D shape the caller reduces for its tile maxima: the same layout).

    The counts are held in 16-bit fields of two int64 words per row, bins 0-3 in lo and 4-7 in
    hi (exact up to 65535 scores per bin; more only worsen the start). m: the running row max, s
    included; top: round(c m) when the counts were last updated (-inf before the first score).
    Returns (lo, hi, top)."""
    # Nothing to do unless some score lies in a bin (most do not where attention is local): a
    # moved max always does, as the new max lies in the top bin.
    if tl.max((s_max * c > m * c - BINS).to(tl.int32), 0) > 0:
        new_top = grid_top(m, c)
        # the grid stays: counts move down by the whole bins the max moved (inf or nan where
        # there were no scores yet: the counts are 0 there)
        moved = tl.where(new_top - top >= 0, tl.minimum(new_top - top, 8.0), 8.0).to(tl.int32)
        bits = (16 * (moved % 4)).to(tl.int64)
        spill = 64 - tl.where(bits > 0, bits, 64)  # the top fields of lo move into hi
        carry = tl.where(bits > 0, (lo >> spill) & ((1 << bits) - 1), 0)
        lo, hi = lo << bits, (hi << bits) | carry
        hi = tl.where(moved >= 4, lo, hi)
        lo = tl.where(moved >= 4, 0, lo)
        hi = tl.where(moved >= 8, 0, hi)
        words = bin_words(s, new_top[:, None, None], c)
        lo, hi = add_counts(lo, hi, tl.sum(tl.sum(words, 2), 1))
        top = new_top
    return lo, hi, top


@triton.jit
def histogram_counts(s, m, c):
    """(lo, hi, top) as ``histogram_update`` leaves them, at once for scores s (rows x n, n a
    power of two) whose row max m is known, in chunks of at most 128; c: scalar or per row."""
    chunk: tl.constexpr = min(s.shape[1], 128)
    top = grid_top(m, c)
    c_row = c + tl.zeros_like(m)
    words = bin_words(tl.reshape(s, (s.shape[0], s.shape[1] // chunk, chunk)), top[:, None, None],
                      c_row[:, None, None])
    zero = tl.zeros([s.shape[0], s.shape[1] // chunk], tl.int64)
    lo, hi = add_counts(zero, zero, tl.sum(words, 2))
    return tl.sum(lo, 1), tl.sum(hi, 1), top


@triton.jit
def histogram_start(lo, hi, top, m, c, k, ALPHA_MODE: tl.constexpr):
    """Per row, the root t0 of sum_j hist_j [e_j - t]_+^k = 1 with e_j the bin midpoints in z
    and hist_j the counts in lo and hi (see the module docstring), clamped to [-1, 0); inf for
    rows with no score (m = -inf). c and k: scalars or one per row."""
    jj = tl.arange(0, BINS)[None, :]
    word = tl.where(jj < 4, lo[:, None], hi[:, None])
    hist = ((word >> (16 * (jj % 4)).to(tl.int64)) & 0xFFFF).to(tl.float32)
    j = jj.to(tl.float32)
    lower = (top[:, None] - j - 0.5 - (m * c)[:, None]) / BINS  # in z; the top bin ends at 0
    e = tl.where(j == 0, 0.5 * lower, lower + 0.5 / BINS)
    below = lower - 0.5 / BINS  # the midpoint of the next bin down
    # the root lies in [below_p, e_p] for the first prefix p of bins whose members put f >= 0 at
    # below_p (the last one if none does); only the members of that prefix lie above the root
    if ALPHA_MODE == 1:
        n, s1, s2 = tl.cumsum(hist, 1), tl.cumsum(hist * e, 1), tl.cumsum(hist * e * e, 1)
        f_below = s2 - 2.0 * below * s1 + n * below * below
    elif ALPHA_MODE == 2:
        n, s1 = tl.cumsum(hist, 1), tl.cumsum(hist * e, 1)
        f_below = s1 - n * below
    else:
        i = tl.arange(0, BINS).to(tl.float32)[None, :, None]
        d = tl.maximum(e[:, :, None] - below[:, None, :], 0.0)  # (row, member bin, prefix)
        k_row = k + tl.zeros_like(m)
        power = tl.exp2(tl.reshape(k_row, (m.shape[0], 1, 1)) * tl.log2(tl.maximum(d, 1e-30)))
        f_below = tl.sum(tl.where(i <= j[:, None, :], hist[:, :, None] * power, 0.0), 1)
    p = tl.sum(((f_below < 1.0) & (j < BINS - 1)).to(tl.float32), 1)[:, None]
    in_prefix = j <= p
    if ALPHA_MODE == 1:
        n, s1, s2 = (tl.sum(tl.where(j == p, n, 0.0), 1), tl.sum(tl.where(j == p, s1, 0.0), 1),
                     tl.sum(tl.where(j == p, s2, 0.0), 1))
        t = (s1 - tl.sqrt(tl.maximum(s1 * s1 - n * (s2 - 1.0), 0.0))) / n
    elif ALPHA_MODE == 2:
        t = (tl.sum(tl.where(j == p, s1, 0.0), 1) - 1.0) / tl.sum(tl.where(j == p, n, 0.0), 1)
    else:
        t = tl.sum(tl.where(j == p, below, 0.0), 1)
        for _step in tl.static_range(NEWTON_STEPS):
            d = tl.maximum(e - t[:, None], 1e-30)
            dk = tl.where(in_prefix, hist * tl.exp2(k_row[:, None] * tl.log2(d)), 0.0)
            f = tl.sum(dk, 1)
            slope = tl.sum(dk / d, 1)
            t += (f - tl.exp2((1.0 - 1.0 / k) * tl.log2(tl.maximum(f, 1e-30)))) / slope
    t = tl.minimum(tl.maximum(t, -1.0), -1e-6)
    return tl.where(m == float("-inf"), float("inf"), t)
