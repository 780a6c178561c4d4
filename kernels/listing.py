"""A threshold pass that lists each row's entries above its trial t, and tau from those lists.

From a t at most tau, tau depends only on the z > t: with the list of them, tau follows from
closed-form steps on the list alone (``resolve_lists``), with no further pass over the keys. The
list of a row is split by column: the key tile's columns 8 g + c (g, c in 0..7) go to list c, each
of LIST_SLOTS entries, so that an entry's place is a count over the columns one thread holds (a
thread of the tensor cores' 64-wide accumulator holds every g of its columns c): no exchange
between threads. A row with more than LIST_SLOTS entries in one of its lists is not resolved
(in a float64 model of dense causal rows at N = 4k, with the row table's start, every query
block's rows fit; at 16k 97%). The lists are scratch of the threshold kernel, LIST_STRIDE float32
per row and list.

Compiled, the entries are stored by inline PTX, one predicated store each in the layout the
scores have; Triton's interpreter runs no assembly, and there ``tl.store`` stores them.
"""

import triton
import triton.language as tl

from .threshold import INTERPRETED, threshold_stats, threshold_step

LIST_SLOTS = tl.constexpr(16)
# Slots per list in memory: a tile adds at most 8 entries to a list, from at most slot
# LIST_SLOTS - 1 on (the entries past LIST_SLOTS land in the last 8, unread), so that no store
# needs a bound of its own.
LIST_STRIDE = tl.constexpr(LIST_SLOTS + 8)
# a store of $3 at the address $1 + $2 (bytes) where $3 > 0
_STORE = tl.constexpr(
    "{ .reg .pred p; .reg .b64 a; setp.gt.f32 p, $3, 0f00000000; mad.wide.u32 a, $2, 1, $1; "
    "@p st.global.f32 [a], $3; mov.b32 $0, 0; }")


@triton.jit
def _store_listed(at, offset, x):
    """x at the address at + offset (in bytes) where x > 0, as one predicated store per entry in
    the tile's own layout: ``tl.store`` would first move a tile of data-dependent pointers to
    another layout through shared memory. Returns 0 per entry. Marked pure so that Inductor's
    analysis of what the kernel writes accepts it: its result joins the lists' lengths, so each
    store runs within its tile's step, before the barrier after which the lists are read."""
    return tl.inline_asm_elementwise(_STORE, "=r,l,r,f", [at, offset, x], dtype=tl.int32,
                                     is_pure=True, pack=1)


@triton.jit
def list_entries(Lists, x, n_list):
    """Append the entries x > 0 of a (rows x 64) tile to the rows' lists at Lists (row-major
    (rows, 8, LIST_STRIDE)), n_list (rows x 8) long so far; returns their new lengths (counting
    those past LIST_SLOTS, which are not kept)."""
    rows: tl.constexpr = x.shape[0]
    xr = tl.reshape(x, (rows, 8, 8))  # [row, g, c]: column 8 g + c
    # the count of live entries up to each g, from 4-bit counters: nibble g of the product of
    # the packed flags with 0x11111111 sums the flags up to g (``tl.cumsum`` would move the tile
    # through shared memory)
    shift = 4 * tl.arange(0, 8)[None, :, None]
    packed = tl.sum(tl.where(xr > 0, tl.full([1], 1, tl.uint32) << shift, 0), 1)
    upto = packed * 0x11111111
    count = (upto >> 28).to(tl.int32)
    # a live entry at g goes to slot (slot before the tile) + (live entries up to g) - 1
    first = (tl.arange(0, rows)[:, None] * 8 + tl.arange(0, 8)[None, :]) * LIST_STRIDE
    first += tl.minimum(n_list, LIST_SLOTS) - 1
    if INTERPRETED:
        slot = ((upto[:, None, :] >> shift) & 15).to(tl.int32)
        tl.store(Lists + first[:, None, :] + slot, xr, mask=xr > 0)
    else:
        # (the count up to g as a byte offset: ((upto >> 4 g) & 15) * 4, in two operations)
        up = upto[:, None, :]
        offset = tl.where(shift == 0, up << 2, up >> tl.maximum(shift - 2, 0)) & 60
        count += tl.sum(_store_listed((Lists + first).to(tl.int64)[:, None, :], offset, xr), 1)
    return n_list + count


@triton.jit
def _load_slots(Lists, at, n_list, first):
    """The listed x in the slots first .. first + 7 of every list, as a (rows x 64) tile (-inf
    past a list's length)."""
    rows: tl.constexpr = n_list.shape[0]
    slot = first + tl.arange(0, 8)[None, None, :]
    # loaded in groups of 4 slots (vector loads), those that a list reaches into, the slots past
    # its length masked after: the whole lists, mostly empty, took a tenth of the threshold
    # kernel's time at N = 4k x 4 and block sparsity 0, waiting on their loads (sampled on an
    # H100; 0.83 -> 0.79 ms, timed in two calls whose common baseline took 0.91 in each)
    group = first + (tl.arange(0, 8) // 4 * 4)[None, None, :]
    x = tl.load(Lists + at + slot, mask=group < n_list[:, :, None], other=float("-inf"))
    x = tl.where(slot < n_list[:, :, None], x, float("-inf"))
    return tl.reshape(x, (rows, 64))


@triton.jit
def resolve_lists(Lists, n_list, t0, k, ALPHA_MODE: tl.constexpr, STEPS: tl.constexpr):
    """tau per row from its lists of x = z - t0 > 0 (every z > t0 of the row, t0 <= tau):
    threshold steps on the listed z alone, as the passes take them (``threshold_step``), with
    every z not listed at most t0. The lists stay in registers: their first 8 slots, and the
    others where some list of the block is longer (read at every step, they took the threshold
    kernel 0.03 ms longer at N = 4k x 4, block sparsity 0, on an H100). Returns (tau, solved);
    rows not solved: a list overflowed, f(t0) < 0 (t0 above tau), or no proof within STEPS
    steps."""
    tl.static_assert(LIST_SLOTS == 16)
    rows: tl.constexpr = n_list.shape[0]
    at = (tl.arange(0, rows)[:, None, None] * 8 + tl.arange(0, 8)[None, :, None]) * LIST_STRIDE
    longest = tl.max(tl.max(n_list, 1), 0)
    head = _load_slots(Lists, at, n_list, 0)
    if longest > 8:
        tail = _load_slots(Lists, at, n_list, 8)
    else:
        tail = tl.full(head.shape, float("-inf"), tl.float32)
    t = t0
    lo = t0
    hi = tl.full(t0.shape, 0.0, tl.float32)
    prev = tl.full(t0.shape, -1.0, tl.float32)
    done = (tl.max(n_list, 1) > LIST_SLOTS) | (t0 == float("inf"))
    solved = t0 == float("inf")
    step = 0
    while (step < STEPS) & (tl.min(done.to(tl.int32), 0) == 0):
        count, s1, s2, gap = threshold_stats(head - (t - t0)[:, None], ALPHA_MODE, k)
        if longest > 8:
            c0, c1, c2, c3 = threshold_stats(tail - (t - t0)[:, None], ALPHA_MODE, k)
            count += c0
            s1 += c1
            s2 += c2
            gap = tl.minimum(gap, c3)
        if step == 0:  # f(t0) < 0: tau lies below t0, among entries not listed
            if ALPHA_MODE == 2:
                done = done | (s1 < 1.0)
            else:
                done = done | (s2 < 1.0)
        # every z not listed lies at or below t0
        gap = tl.minimum(gap, t - t0)
        t_next, lo, hi, prev, converged = threshold_step(t, lo, hi, count, s1, s2, gap, prev, k,
                                                         ALPHA_MODE)
        t_next = tl.where(done, t, t_next)
        # a step below t0 leaves the list: give up the row
        lost = t_next < t0
        solved = solved | (converged & ~done & ~lost)
        done = done | converged | lost
        t = t_next
        step += 1
    return tl.where(solved, t, t0), solved
