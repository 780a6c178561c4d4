"""The Triton kernels, called through their launch helpers (outside torch.compile).

Without a GPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), at small
shapes; with one, the same cases run compiled. References: the float64 oracles of conftest and
autograd through the ``entmax`` package. bf16 is left to the GPU tests: the interpreter's
``tl.dot`` multiplies bf16 storage bits.
"""

from __future__ import annotations

import itertools
import math

import entmax as entmax_pkg
import pytest
import torch
import triton
import triton.language as tl

from kernels import attention_bwd, attention_fwd, entmax_rows, listing

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64
TILE = attention_fwd.TILE


def _qkv(B=1, Hq=2, Hkv=1, Nq=70, Nk=90, D=16, DV=16, dtype=torch.float32, scale=1.0,
         v_offset=0.0):
    q = torch.randn(B, Hq, Nq, D, device=DEV) * scale
    k = torch.randn(B, Hkv, Nk, D, device=DEV) * scale
    v = torch.randn(B, Hkv, Nk, DV, device=DEV) + v_offset
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _assert_lists(lists, counts, live):
    """lists[..., :count] hold the indices of the True entries of live (..., n), ascending."""
    assert torch.equal(counts.long(), live.sum(-1))
    for idx in itertools.product(*map(range, live.shape[:-1])):
        assert lists[idx][: counts[idx]].tolist() == live[idx].nonzero().flatten().tolist()


def _mask(kind, B, Hq, Nq, Nk):
    if kind == "bool":
        return torch.rand(B, 1, Nq, Nk, device=DEV) > 0.3
    if kind == "float":
        return torch.randn(Nq, Nk, device=DEV)
    if kind == "dead rows":  # rows 0..4 see no key at all
        m = torch.ones(B, Hq, Nq, 1, dtype=torch.bool, device=DEV)
        m[:, :, :5] = False
        return m
    if kind == "finfo.min row":  # every score of row 3 ~ finfo.min: all tie, weights uniform
        m = torch.zeros(Nq, Nk, device=DEV)
        m[3] = torch.finfo(torch.float32).min
        return m
    return None


def _package_normalizer(alpha):
    """Differentiable entmax over the keys (the entmax package)."""
    def normalize(s, a):
        if isinstance(a, float) and a == 1.5:
            return entmax_pkg.entmax15(s, dim=-1)
        return entmax_pkg.entmax_bisect(s, a, dim=-1, n_iter=100)
    return normalize


FORWARD_CASES = {
    "plain": {},
    "causal": dict(causal=True),
    "sparsemax": dict(alpha=2.0),
    "alpha 1.3": dict(alpha=1.3),
    "alpha 2.5": dict(alpha=2.5),
    "causal Nq < Nk, several blocks": dict(Nq=130, Nk=200, causal=True, scale=2.0),
    "causal Nq > Nk": dict(Nq=150, Nk=60, causal=True),
    "over 32 live key tiles": dict(Nq=70, Nk=2200, scale=3.0),
    "bool mask": dict(mask="bool"),
    "float mask": dict(mask="float"),
    "dead rows": dict(mask="dead rows"),
    "finfo.min row": dict(mask="finfo.min row"),
    "gqa": dict(Hq=4, Hkv=2, causal=True, Nq=100, Nk=60),
    "per-head alpha": dict(head_alpha=(1.2, 1.9)),
    "head dims 80 / 48, scale": dict(D=80, DV=48, sm_scale=0.3),
    # the sweep takes its tile maxima of q k^T before scaling only for scale > 0
    "negative scale": dict(causal=True, sm_scale=-0.4),
    "float16, negative scale": dict(dtype=torch.float16, causal=True, Nq=200, Nk=200,
                                    sm_scale=-0.3),
    "one query": dict(Nq=1, Nk=77),
    "float16": dict(dtype=torch.float16, causal=True),
    # 2 key tiles per sweep step (4 beyond SHORT_SWEEP_KEYS: test_attention_sweep_steps)
    "float16, 600 keys": dict(dtype=torch.float16, causal=True, Nq=600, Nk=600),
    # dP = dO v^T then has a large common part, which dS = u (dP - delta) cancels
    "float16, values with a common offset": dict(dtype=torch.float16, causal=True, scale=2.0,
                                                 v_offset=50.0),
}


def _run_forward(oracle, causal=False, mask=None, alpha=1.5, head_alpha=None, sm_scale=None,
                 dtype=torch.float32, **shape):
    q, k, v = _qkv(dtype=dtype, **shape)
    B, Hq, Nq, _ = q.shape
    m = _mask(mask, B, Hq, Nq, k.shape[2])
    ha = torch.tensor(head_alpha, device=DEV) if head_alpha else None
    outputs = attention_fwd.attention_forward(q, k, v, m, causal, sm_scale, alpha, ha,
                                              for_backward=True, stats=True)
    a = ha.double() if ha is not None else alpha
    expected = oracle.attention(q, k, v, m, causal, sm_scale, a)
    return (q, k, v, m, causal, sm_scale, alpha, ha), outputs, expected


def _scores_and_weights(oracle, q, k, m, causal, sm_scale, alpha, ha):
    """The oracle's float64 scores s (heads of q), their row max, the weights p and alpha - 1 (a
    tensor that broadcasts against the rows)."""
    Hq = q.shape[1]
    s = oracle.scores(q.double(), k.double().repeat_interleave(Hq // k.shape[1], 1),
                      None if m is None else (m if m.dtype == torch.bool else m.double()),
                      causal, sm_scale)
    am1 = (ha.double().view(1, Hq, 1) if ha is not None
           else torch.tensor(alpha, dtype=F64, device=DEV)) - 1
    return s, s.amax(-1), oracle.entmax(s, am1 + 1 if ha is not None else alpha), am1


def _assert_tile_table(s, smax, p, tau, tile_max, alpha, ha):
    """The table bounds max (s - row_max) over each tile from above, or is -inf on a tile with no
    p > 0; the tiles the backward finds live are exactly those with some p > 0. Returns them."""
    fin = torch.isfinite(smax)
    rel = torch.nn.functional.pad(s - torch.where(fin, smax, 0).unsqueeze(-1),
                                  (0, -s.shape[-1] % TILE, 0, -s.shape[-2] % TILE), value=-math.inf)
    exact = rel.unflatten(-2, (-1, TILE)).unflatten(-1, (-1, TILE)).amax((-3, -1))
    p_tiles = torch.nn.functional.pad(p, (0, -p.shape[-1] % TILE, 0, -p.shape[-2] % TILE))
    has_p = p_tiles.unflatten(-2, (-1, TILE)).unflatten(-1, (-1, TILE)).amax((-3, -1)) > 0
    assert (tile_max.double() >= exact - 1e-5)[has_p].all()
    live = attention_bwd.live_blocks(tau, tile_max, alpha, ha, TILE, TILE)
    assert torch.equal(live, has_p)
    return live


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_attention_forward(oracle, case):
    """out and u_shift against the oracle; row_max, tau and tile_max keep their contract; stats add
    up."""
    cfg = FORWARD_CASES[case]
    args, (out, tau, row_max, tile_max, u_shift, stats), expected = _run_forward(oracle, **cfg)
    q, k, v, m, causal, sm_scale, alpha, ha = args
    tol = 2e-3 if q.dtype == torch.float16 else 2e-5
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)

    Hq = q.shape[1]
    s, smax, p, am1 = _scores_and_weights(oracle, q, k, m, causal, sm_scale, alpha, ha)
    torch.testing.assert_close(row_max.double(), smax, rtol=1e-5, atol=1e-5)
    fin = torch.isfinite(smax)
    assert torch.isinf(tau[~fin]).all()
    # p from the saved statistics reproduces the output's weights
    z = am1.unsqueeze(-1) * (s - torch.where(fin, smax, 0).unsqueeze(-1))
    p_saved = (z - tau.double().unsqueeze(-1)).clamp_min(0) ** (1 / am1.unsqueeze(-1))
    torch.testing.assert_close(p_saved.nan_to_num(0), p, rtol=0, atol=100 * tol)
    # out + u_shift = sum_j u_j v_j / sum_j u_j with u = p^(2 - alpha) on the support
    u = torch.where(p > 0, p.clamp_min(1e-300) ** (1 - am1.unsqueeze(-1)), 0.0)
    v_heads = v.double().repeat_interleave(Hq // v.shape[1], 1)
    u_expected = (u @ v_heads) / u.sum(-1, keepdim=True).clamp_min(1e-300)
    # (for alpha > 1.5, u = d^(k-1) has an infinite slope at the edge of the support, where the
    # float32 rounding of d = z - tau is relatively large; for alpha > 2 u itself is unbounded)
    alpha_max = ha.max().item() if ha is not None else alpha
    u_tol = 2e-3 if alpha_max > 2 else max(tol, 1e-4)
    torch.testing.assert_close(out.double() + u_shift.double(), u_expected, rtol=u_tol, atol=u_tol)
    live = _assert_tile_table(s, smax, p, tau, tile_max, alpha, ha)
    # the backward's lists of live tiles, per query block of one and two tiles and per key tile
    for block_m in (TILE, 2 * TILE):
        k_list, k_count, q_list, q_count = attention_bwd.live_lists(tau, tile_max, alpha, ha, block_m)
        _assert_lists(k_list, k_count, attention_bwd.live_blocks(tau, tile_max, alpha, ha, block_m, TILE))
        _assert_lists(q_list, q_count, live.transpose(-1, -2))
    # stats: passes, live tiles of the output pass <= admissible tiles, support = #{p > 0}
    stats = stats.reshape(-1, 4)
    assert (stats[:, 0] >= 1).all() and (stats[:, 1] <= stats[:, 2]).all()
    assert stats[:, 3].sum().item() == pytest.approx((p > 0).sum().item(), abs=2)


def test_attention_forward_in_head_groups(oracle, monkeypatch):
    """A row table too large for ROW_TABLE_BYTES: the heads run in groups (4 + 2 here), with
    the same results, bit for bit, as all at once, and the oracle's output."""
    q, k, v = _qkv(B=2, Hq=3, Hkv=1, Nq=130, Nk=200)
    ha = torch.tensor((1.3, 1.5, 2.0), device=DEV)
    whole = attention_fwd.attention_forward(q, k, v, None, True, None, 1.5, ha, for_backward=True)
    per_head = q.shape[2] * triton.cdiv(k.shape[2], TILE)  # bytes of one head's row table
    monkeypatch.setattr(attention_fwd, "ROW_TABLE_BYTES", 4 * per_head + 1)
    grouped = attention_fwd.attention_forward(q, k, v, None, True, None, 1.5, ha,
                                              for_backward=True)
    for a, b in zip(whole, grouped):
        assert torch.equal(a, b)
    expected = oracle.attention(q, k, v, None, True, None, ha.double())
    torch.testing.assert_close(grouped[0].double(), expected, rtol=2e-5, atol=2e-5)


def _wide_view(x):
    """x as a view of a tensor with one more element per row, a layout the tensor memory
    accelerator cannot take (rows D + 1 elements apart: strides must be multiples of 16 bytes)."""
    wide = torch.randn(*x.shape[:-1], x.shape[-1] + 1, device=x.device).to(x.dtype)
    wide[..., :-1] = x
    return wide[..., :-1]


@pytest.mark.parametrize("D, mask, dtype", [(16, None, torch.float16), (24, None, torch.float16),
                                            (16, "bool", torch.float16),
                                            (16, None, torch.float32)])
def test_key_and_value_tiles_through_descriptors_where_k_and_v_allow(oracle, D, mask, dtype):
    """In direct launches the kernels load key and value tiles of 16-bit inputs through TMA
    descriptors where k and v allow it (the sweep: its key blocks in the 4-tile sweep only, no
    mask), and through pointers where not (a view of a wider tensor; a view starting one element
    in; heads expanded, stride 0), for float32 inputs and in launches as Inductor has them. Every
    mix gives the oracle's output, keys past Nk (150 keys: the boxes of 64 and 256 reach past
    them) and head dims past D (24 of a box of 32) included, and the same output, bit for bit, as
    pointers alone."""
    q, k, v = _qkv(Nq=150, Nk=150, D=D, DV=D, dtype=dtype)
    assert attention_fwd.tile_descriptor(k, 256, 16) is not None
    assert attention_fwd.tile_descriptor(_wide_view(k), 256, 16) is None
    assert attention_fwd.tile_descriptor(torch.randn(1, 1, 150, 17, device=DEV)[..., 1:], 256,
                                         16) is None
    assert attention_fwd.tile_descriptor(k.expand(1, 2, 150, D), 256, 16) is None
    flags = []

    def record(kernel):
        class Record:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    flags.append((kwargs["KEY_TMA"], kwargs.get("VALUE_TMA")))
                    return kernel[grid](*args, **kwargs)
                return launch
        return Record()

    attn_mask = _mask(mask, 1, 2, 150, 150)
    expected = oracle.attention(q, k, v, attn_mask, True, None, 1.5)
    sweep_tma = dtype != torch.float32 and mask is None
    pass_tma = dtype != torch.float32
    for keys, values, key_tma, value_tma in ((k, v, True, True), (_wide_view(k), v, False, True),
                                             (k, _wide_view(v), True, False)):
        flags.clear()
        out = attention_fwd.attention_forward(q, keys, values, attn_mask, True, None, 1.5,
                                              launch=record)[0]
        assert flags == [(key_tma and sweep_tma, None), (key_tma and pass_tma, None),
                         (key_tma and pass_tma, value_tma and pass_tma)]
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
        flags.clear()
        pointers = attention_fwd.attention_forward(q, keys, values, attn_mask, True, None, 1.5,
                                                   launch=record, direct_launch=False)[0]
        assert flags == [(False, None), (False, None), (False, False)]
        assert torch.equal(out, pointers)


MASK_LAYOUTS = {
    # name: (mask of (B=2, Hq=2, 144, 144), MASK_TMA expected: 1 boxes of rows, 2 one row, 0 pointers)
    "bool, per batch and head": (lambda: torch.rand(2, 2, 144, 144, device=DEV) > 0.3, 1),
    "bool, shared (N, N)": (lambda: torch.rand(144, 144, device=DEV) > 0.3, 1),
    "bool, expanded over batch and heads (stride 0)":
        (lambda: (torch.rand(1, 1, 144, 144, device=DEV) > 0.3).expand(2, 2, 144, 144), 1),
    "bool, key padding (B, 1, 1, N)": (lambda: torch.rand(2, 1, 1, 144, device=DEV) > 0.2, 2),
    "float16, per head": (lambda: torch.randn(1, 2, 144, 144, device=DEV).half(), 1),
    "bool, rows 145 bytes apart": (lambda: (torch.rand(144, 145, device=DEV) > 0.3)[:, :144], 0),
    "bool, keys strided": (lambda: (torch.rand(144, 288, device=DEV) > 0.3)[:, ::2], 0),
}


@pytest.mark.parametrize("layout", list(MASK_LAYOUTS))
def test_mask_tiles_through_descriptors_where_the_mask_allows(oracle, layout):
    """In direct launches the three forward kernels load the mask through TMA descriptors where
    its layout allows (``mask_descriptor``): boxes of rows, or of the one row of a key-padding
    mask broadcast over the queries; dims of stride 0 read at coordinate 0; pointers where a
    stride is not a multiple of 16 bytes or the keys are not contiguous. Every layout gives the
    oracle's output (144 queries and keys: the boxes reach past them) and the same output, bit
    for bit, as pointers alone."""
    make, mask_tma = MASK_LAYOUTS[layout]
    q, k, v = _qkv(B=2, Hq=2, Hkv=2, Nq=144, Nk=144, dtype=torch.float16)
    attn_mask = make()
    flags = []

    def record(kernel):
        class Record:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    flags.append(kwargs["MASK_TMA"])
                    return kernel[grid](*args, **kwargs)
                return launch
        return Record()

    out = attention_fwd.attention_forward(q, k, v, attn_mask, True, None, 1.5, launch=record)[0]
    assert flags == [mask_tma] * 3
    expected = oracle.attention(q, k, v, attn_mask, True, None, 1.5)
    torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=2e-3)
    flags.clear()
    pointers = attention_fwd.attention_forward(q, k, v, attn_mask, True, None, 1.5, launch=record,
                                               direct_launch=False)[0]
    assert flags == [0] * 3
    assert torch.equal(out, pointers)


@pytest.mark.parametrize("causal, Nq, Nk, Hq, Hkv", [(False, 80, 144, 4, 2), (True, 208, 144, 4, 1)])
def test_mask_descriptor_boxes_with_gqa_and_unequal_lengths(oracle, causal, Nq, Nk, Hq, Hkv):
    """Mask descriptors with more query heads than key heads (the mask's head is the query's),
    fewer or more queries than keys, causal or not, a bool mask per head and a float32 mask of
    the queries and keys (fp16 inputs): the oracle's output, and pointers' bit for bit."""
    q, k, v = _qkv(B=2, Hq=Hq, Hkv=Hkv, Nq=Nq, Nk=Nk, dtype=torch.float16)
    for attn_mask in (torch.rand(2, Hq, Nq, Nk, device=DEV) > 0.3,
                      torch.randn(Nq, Nk, device=DEV) * 2):
        out = attention_fwd.attention_forward(q, k, v, attn_mask, causal, None, 1.5)[0]
        assert attention_fwd.mask_descriptor(*attention_fwd.mask_4d(attn_mask)[:2], 64, 64)[1] == 1
        expected = oracle.attention(q, k, v, attn_mask, causal, None, 1.5)
        torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=2e-3)
        pointers = attention_fwd.attention_forward(q, k, v, attn_mask, causal, None, 1.5,
                                                   direct_launch=False)[0]
        assert torch.equal(out, pointers)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_attention_table_start(oracle, monkeypatch, alpha):
    """With many candidate tiles per query block, the threshold passes start from the row table's
    tile maxima: a lower bound of tau on every row (no pass run here, none taking tau from the
    lists), above -1 on most; the passes from there end at the oracle's tau. Summed over the
    table in chunks of 8 key tiles instead of START_CHUNK, the start is the same."""
    q, k, v = _qkv(Hq=2, Nq=80, Nk=1500, scale=0.5)  # 24 key tiles, nearly all candidates
    tau = attention_fwd.attention_forward(q, k, v, None, False, None, alpha)[1]
    monkeypatch.setattr(attention_fwd, "MAX_STEPS", 0)
    monkeypatch.setattr(attention_fwd, "RESOLVE_STEPS", 0)
    start = attention_fwd.attention_forward(q, k, v, None, False, None, alpha)[1]
    s = oracle.scores(q.double(), k.double().repeat_interleave(2, 1), None, False)
    # z - tau = p^(alpha - 1) at the max, where z = 0
    exact = -oracle.entmax(s, alpha).amax(-1) ** (alpha - 1)
    torch.testing.assert_close(tau.double(), exact, rtol=0, atol=1e-5)
    assert (start.double() <= exact + 1e-6).all()
    assert (start > -0.99).double().mean() > 0.9
    monkeypatch.setattr(attention_fwd, "START_CHUNK", 8)
    chunked = attention_fwd.attention_forward(q, k, v, None, False, None, alpha)[1]
    torch.testing.assert_close(chunked, start, rtol=0, atol=1e-5)


@triton.jit
def _list_and_resolve(X, T0, Lists, Tau, Solved, n_tiles, k, ALPHA_MODE: tl.constexpr,
                      STEPS: tl.constexpr):
    """``listing.list_entries`` over n_tiles (64 x 64) tiles of x, then ``resolve_lists``."""
    rows = tl.arange(0, 64)
    at = rows[:, None] * 64 + tl.arange(0, 64)[None, :]
    n_list = tl.zeros([64, 8], tl.int32)
    for j in range(0, n_tiles):
        n_list = listing.list_entries(Lists, tl.load(X + j * 4096 + at), n_list)
    tl.debug_barrier()
    tau, solved = listing.resolve_lists(Lists, n_list, tl.load(T0 + rows), k, ALPHA_MODE, STEPS)
    tl.store(Tau + rows, tau)
    tl.store(Solved + rows, solved.to(tl.int32))


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_listing_resolves_tau_from_its_lists(oracle, alpha):
    """Rows of 0 to about 190 entries x > 0 spread over 3 tiles, listed by column (8 lists a
    row) and resolved, z = t0 + x: rows whose lists all fit their LIST_SLOTS slots and whose
    entries reach f(t0) >= 0 get the oracle's tau of all their z; rows with a list past its
    slots (overflow) or too little mass above t0 are left unsolved at t0."""
    n_tiles, slots = 3, listing.LIST_SLOTS.value
    x = -torch.rand(64, n_tiles * 64, dtype=F64)
    for r in range(64):  # row r: 3 r entries above t0, at random columns
        cols = torch.randperm(n_tiles * 64)[: 3 * r]
        x[r, cols] = torch.rand(len(cols), dtype=F64) * 0.6
    t0 = -0.9 + 0.3 * torch.rand(64, dtype=F64)
    lists = torch.full((64, 8, listing.LIST_STRIDE.value), float("nan"), device=DEV)
    tau = torch.empty(64, device=DEV)
    solved = torch.empty(64, dtype=torch.int32, device=DEV)
    tiles = x.float().reshape(64, n_tiles, 64).transpose(0, 1).contiguous().to(DEV)
    _list_and_resolve[(1,)](tiles, t0.float().to(DEV), lists, tau, solved, n_tiles,
                            1.0 / (alpha - 1), entmax_rows.alpha_mode(alpha, False),
                            attention_fwd.RESOLVE_STEPS)
    x32 = x.float().double()  # the entries as the kernel holds them
    per_list = (x32 > 0).reshape(64, -1, 8).sum(1)  # column 8 g + c goes to list c
    mass = (x32.clamp_min(0) ** (1 / (alpha - 1))).sum(-1)
    fits = (per_list <= slots).all(-1) & (mass >= 1)
    z = t0.float().double()[:, None] + x32
    expected = z.amax(-1) - oracle.entmax(z / (alpha - 1), alpha).amax(-1) ** (alpha - 1)
    solved, tau = solved.cpu().bool(), tau.cpu()
    assert fits.sum() > 20 and (~fits).sum() > 10 and (per_list > 8).any(-1)[fits].sum() > 5
    assert torch.equal(solved, fits)
    torch.testing.assert_close(tau[fits].double(), expected[fits], rtol=0, atol=1e-5)
    assert torch.equal(tau[~fits], t0.float()[~fits])


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_attention_listing_pass(oracle, alpha):
    """The first threshold pass lists the z above each row's start (``kernels/listing.py``):
    where every list holds them all, tau comes from the lists and the block takes that one pass;
    the second block's rows (q = 0: equal scores, every key in the support) overflow their lists
    and go on with passes. tau is the oracle's in both blocks."""
    q, k, v = _qkv(Hq=2, Nq=128, Nk=1500)  # 24 key tiles, about 22 keys per row in the support
    q[:, :, 64:] = 0
    out = attention_fwd.attention_forward(q, k, v, None, False, None, alpha, stats=True)
    tau, passes = out[1], out[5][..., 0]  # (B, Hq, Nq), (B, Hq, query blocks)
    s = oracle.scores(q.double(), k.double().repeat_interleave(2, 1), None, False)
    p = oracle.entmax(s, alpha)
    # z - tau = p^(alpha - 1) at the max, where z = 0
    exact = -p.amax(-1) ** (alpha - 1)
    torch.testing.assert_close(tau.double(), exact, rtol=0, atol=1e-5)
    assert (passes[..., 0] == 1).all(), passes
    assert (passes[..., 1] > 1).all(), passes


def _sweep_only(kernel):
    """A launch wrapper that runs the dense sweep and skips the other forward kernels."""
    if kernel is attention_fwd.adasplash_attention_max:
        return kernel

    class Skip:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None
    return Skip()


@pytest.mark.parametrize("dtype, D, mask, alpha, cap, capped", [
    (torch.bfloat16, 128, None, 1.5, True, True),
    (torch.float16, 64, None, 2.0, True, True),
    (torch.bfloat16, 128, None, 1.5, False, False),  # as Inductor's launches have it
    (torch.bfloat16, 128, "bool", 1.5, True, False),
    (torch.bfloat16, 128, None, 1.3, True, False),
    (torch.float32, 128, None, 1.5, True, False),
    (torch.bfloat16, 256, None, 1.5, True, False),
])
def test_threshold_register_cap(dtype, D, mask, alpha, cap, capped):
    """The threshold kernel, and no other, is launched with THRESHOLD_REGISTERS only where that
    was measured to pay and compiles without spilling much: 16-bit inputs, no mask, alpha 1.5 or
    2, D up to 128, and a caller whose launches pass it on. The sweep takes its keys through a
    descriptor for the same inputs and callers, whatever alpha; the passes their key and value
    tiles for the 16-bit inputs of such callers (the threshold kernel then in
    THRESHOLD_TMA_STAGES pipeline stages, D up to 128)."""
    launched = {}

    def record(kernel):
        class Record:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: launched.setdefault(kernel.fn.__name__, kwargs)
        return Record()

    q = torch.randn(1, 2, 256, D).to(dtype)
    attention_fwd.attention_forward(q, q, q, _mask(mask, 1, 2, 256, 256), True, None, alpha,
                                    launch=record, direct_launch=cap)
    caps = {name.removeprefix("adasplash_attention_"): kwargs.get("maxnreg")
            for name, kwargs in launched.items()}
    assert caps == {"max": None, "out": None,
                    "threshold": attention_fwd.THRESHOLD_REGISTERS if capped else None}
    assert launched["adasplash_attention_max"]["KEY_TMA"] == (
        cap and dtype != torch.float32 and mask is None and D <= 128)
    pass_tma = cap and dtype != torch.float32
    assert launched["adasplash_attention_threshold"]["KEY_TMA"] == pass_tma
    assert launched["adasplash_attention_out"]["KEY_TMA"] == pass_tma
    assert launched["adasplash_attention_out"]["VALUE_TMA"] == pass_tma
    stages = attention_fwd.THRESHOLD_TMA_STAGES if pass_tma and D <= 128 else 2 if D <= 128 else 1
    assert launched["adasplash_attention_threshold"]["num_stages"] == stages


def test_ops_launch_directly_only_where_wrap_triton_launches(monkeypatch):
    """The CUDA path asks for the launch options of direct launches (the register cap, the key
    descriptor) only where ``wrap_triton`` launches the kernels itself (an eager call of the op
    runs with it off), not where it records them for a graph."""
    set_wrap_triton_enabled = getattr(pytest.importorskip("torch._library.triton"),
                                      "set_wrap_triton_enabled", None)
    if set_wrap_triton_enabled is None:
        pytest.skip("this torch has no wrap_triton switch")
    from lowering import triton_path

    asked = []
    monkeypatch.setattr(triton_path.attention_fwd, "attention_forward",
                        lambda *args, direct_launch, **kwargs: asked.append(direct_launch))
    q = torch.randn(1, 2, 64, 16)
    args = (q, q, q, None, 0.0, True, None, 1.5, None, None, False)
    with set_wrap_triton_enabled(True):
        triton_path.attention_forward(*args)
    with set_wrap_triton_enabled(False):
        triton_path.attention_forward(*args)
    assert asked == [False, True]


HISTOGRAM_CASES = {
    # the sweep visits key tiles from the last to the first: a max in the first one comes last,
    # and the counts gathered so far must move down by the bins the max moved
    "alpha 1.3, max found last": dict(alpha=1.3, late_max=True),
    "per-head alpha, causal, dead rows": dict(head_alpha=(1.2, 1.9), causal=True,
                                              mask="dead rows", Nq=130, Nk=130),
    "alpha 1.75, causal, Nq < Nk": dict(alpha=1.75, causal=True, scale=1.2, Nq=100, Nk=300),
    "alpha 1.6, head dim 144 (one key tile per step)": dict(alpha=1.6, D=144, Nq=70, Nk=200),
    # closed forms, used when these modes are in HISTOGRAM_MODES
    "alpha 1.5, max found last": dict(alpha=1.5, late_max=True),
    "alpha 2, causal": dict(alpha=2.0, causal=True, Nq=130, Nk=130),
}


@pytest.mark.parametrize("case", HISTOGRAM_CASES)
def test_attention_histogram_start(oracle, case, monkeypatch):
    """The dense sweep's start for tau from its histogram (for every alpha here): within one bin
    (1/8 in z) of the exact tau wherever tau lies above the lowest bin (z > -7/8), in [-1, 0) on
    every row with a key, +inf on rows without; the passes from there end at the exact tau."""
    monkeypatch.setattr(attention_fwd, "HISTOGRAM_MODES", (0, 1, 2))
    cfg = dict(HISTOGRAM_CASES[case])
    causal, mask, alpha = cfg.pop("causal", False), cfg.pop("mask", None), cfg.pop("alpha", 1.5)
    head_alpha, late_max = cfg.pop("head_alpha", None), cfg.pop("late_max", False)
    q, k, v = _qkv(**cfg)
    if late_max:  # queries share a direction c, and keys 0..9 lie along it: they score highest
        c = torch.nn.functional.normalize(torch.randn(q.shape[-1], device=DEV), dim=0)
        q += 3 * c
        k[:, :, :10] = q.shape[-1] ** 0.5 * c * torch.linspace(1.2, 1.6, 10, device=DEV)[:, None]
    B, Hq, Nq, _ = q.shape
    m = _mask(mask, B, Hq, Nq, k.shape[2])
    ha = torch.tensor(head_alpha, device=DEV) if head_alpha else None
    _, start, row_max, *_ = attention_fwd.attention_forward(q, k, v, m, causal, None, alpha, ha,
                                                            launch=_sweep_only)
    a = ha.double().view(1, Hq, 1) if ha is not None else torch.tensor(alpha, dtype=F64)
    s = oracle.scores(q.double(), k.double().repeat_interleave(Hq // k.shape[1], 1), m, causal)
    if late_max:
        assert (s.argmax(-1) < 10).double().mean() > 0.5
    p = oracle.entmax(s, a if ha is not None else alpha)
    tau = -p.amax(-1) ** (a - 1)  # z - tau = p^(alpha - 1) at the max, where z = 0
    seen = torch.isfinite(row_max)
    assert torch.isinf(start[~seen]).all() and (start[~seen] > 0).all()
    start, tau = start[seen].double(), tau[seen]
    assert ((start >= -1) & (start < 0)).all()
    inside = tau > -7 / 8
    assert inside.double().mean() > 0.5, inside.double().mean()
    assert (start - tau)[inside].abs().max() <= 1 / 8 + 1e-5
    out, tau_end, *_ = attention_fwd.attention_forward(q, k, v, m, causal, None, alpha, ha)
    torch.testing.assert_close(tau_end[seen].double(), tau, rtol=0, atol=1e-5)
    expected = oracle.attention(q, k, v, m, causal, None, ha.double() if ha is not None else alpha)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("alpha", [1.1, 1.3, 1.7, 1.9])
def test_attention_threshold_newton_ends_at_rounding_level(oracle, alpha):
    """Any alpha: Newton from the histogram start converges quadratically, so every query block
    is done in a few passes (a step at rounding level used to start a bisection of an old
    bracket instead)."""
    _, (out, tau, *_, stats), expected = _run_forward(oracle, Nq=256, Nk=256, D=64, DV=16,
                                                      causal=True, alpha=alpha)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)
    passes = stats.reshape(-1, 4)[:, 0]
    assert passes.max().item() <= 7, passes.tolist()


@pytest.mark.parametrize("short_keys", [0, 4096], ids=["4-tile steps", "2-tile steps"])
def test_attention_sweep_steps(oracle, sweep_outputs, short_keys, monkeypatch):
    """The sweep in steps of 4 key tiles (keys beyond SHORT_SWEEP_KEYS; blocks whose first step
    holds 2 admissible tiles) and of 2: the oracle's attention, and a row table whose code c of a
    row and tile bounds y = (alpha - 1)(max over the tile of s - r) as (c - 1) / 127 <= y < c / 127,
    r the row's reference. A row whose max lies in its reference tiles (m = r) has y = 0 on its
    max tile, code 1: a product and subtraction fused into one rounding once gave 0 there."""
    monkeypatch.setattr(attention_fwd, "SHORT_SWEEP_KEYS", short_keys)
    q, k, v = _qkv(Hq=2, Hkv=1, Nq=600, Nk=600, dtype=torch.float16)
    out, _, row_max, *_ = attention_fwd.attention_forward(q, k, v, None, True, None, 1.5,
                                                          launch=sweep_outputs.launch)
    captured = sweep_outputs.kept
    torch.testing.assert_close(out.double(), oracle.attention(q, k, v, None, True, None, 1.5),
                               rtol=2e-3, atol=2e-3)
    s = oracle.scores(q.double(), k.double().repeat_interleave(2, 1), None, True)[0]
    s = torch.nn.functional.pad(s, (0, -s.shape[-1] % TILE), value=-math.inf)
    ref = captured["ref"].double()  # (heads, Nq)
    y = 0.5 * (s.unflatten(-1, (-1, TILE)).amax(-1) - ref.unsqueeze(-1))  # (heads, Nq, tiles)
    code = captured["table"].transpose(1, 2).double()
    seen = (y >= -1 + 1e-3) & (y < 126 / 127 - 1e-3)  # (else the codes saturate)
    assert seen.float().mean() > 0.05
    assert ((code - 1) / 127 <= y + 1e-4)[seen].all() and (y < code / 127 + 1e-4)[seen].all()
    top = row_max[0].double() == ref
    assert top.float().mean() > 0.5
    # (entries of tiles past a block's last admissible one are not written)
    assert (code.masked_fill(y == -math.inf, -128).amax(-1)[top] == 1).all()


@pytest.mark.parametrize("block_m", [64, 128])
def test_attention_forward_block_sizes(oracle, block_m, monkeypatch):
    """Both query-block sizes of the sparse kernel give the same attention, and a tile table per
    64-row slice (two slices per block of 128)."""
    monkeypatch.setattr(attention_fwd, "SPARSE_BLOCK_M", block_m)
    args, (out, tau, _, tile_max, *_), expected = _run_forward(oracle, Nq=200, Nk=200, causal=True,
                                                               scale=2.0)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)
    q, k, v, m, causal, sm_scale, alpha, ha = args
    s, smax, p, _ = _scores_and_weights(oracle, q, k, m, causal, sm_scale, alpha, ha)
    _assert_tile_table(s, smax, p, tau, tile_max, alpha, ha)


BACKWARD_CASES = {
    "plain": {},
    "causal, several blocks": dict(Nq=150, Nk=150, causal=True, scale=2.0),
    # dq's key tiles before the query block run with no range or causal check
    "causal, Nq > Nk, more blocks": dict(Nq=330, Nk=300, causal=True),
    "Nq < Nk, more blocks": dict(Nq=260, Nk=390),
    "float16, causal, interior tiles of 128-row blocks": dict(dtype=torch.float16, causal=True,
                                                              Nq=300, Nk=300),
    "sparsemax": dict(alpha=2.0),
    "alpha 1.3": dict(alpha=1.3),
    "bool mask": dict(mask="bool"),
    "float mask (no grad)": dict(mask="float"),
    "dead rows": dict(mask="dead rows"),
    "gqa, Nq > Nk": dict(Hq=4, Hkv=2, causal=True, Nq=100, Nk=60),
    "per-head alpha": dict(head_alpha=(1.2, 1.9)),
    "head dims 80 / 48": dict(D=80, DV=48, sm_scale=0.3),
    "float16": dict(dtype=torch.float16, causal=True),
    # dP = dO v^T then has a large common part, which dS = u (dP - delta) cancels
    "float16, values with a common offset": dict(dtype=torch.float16, causal=True, scale=2.0,
                                                 v_offset=50.0),
}


@pytest.mark.parametrize("case", BACKWARD_CASES)
def test_attention_backward(oracle, case):
    """dq, dk, dv (and dalpha) against autograd of a float64 dense entmax-package attention, with
    delta from the forward's u_shift and from a pass of its own; two runs agree bitwise; rows that
    see no key get zero dq."""
    cfg = dict(BACKWARD_CASES[case])
    causal, mask, alpha = cfg.pop("causal", False), cfg.pop("mask", None), cfg.pop("alpha", 1.5)
    head_alpha, sm_scale = cfg.pop("head_alpha", None), cfg.pop("sm_scale", None)
    q, k, v = _qkv(**cfg)
    B, Hq, Nq, _ = q.shape
    m = _mask(mask, B, Hq, Nq, k.shape[2])
    ha = torch.tensor(head_alpha, device=DEV) if head_alpha else None
    out, tau, row_max, tile_max, u_shift = attention_fwd.attention_forward(
        q, k, v, m, causal, sm_scale, alpha, ha, for_backward=True)
    do = torch.randn_like(out)
    runs = [attention_bwd.attention_backward(do, q, k, v, tau, row_max, tile_max, m, causal,
                                             sm_scale, alpha, ha, need_alpha_grad=ha is not None,
                                             out=out, u_shift=u)
            for u in (u_shift, u_shift, None)]
    for g1, g2 in zip(runs[0], runs[1]):
        assert g1 is None or torch.equal(g1, g2)
    assert (runs[0][3] is None) == (ha is None)
    for grads in runs[1:]:
        _check_backward(oracle, list(grads), q, k, v, do, m, causal, sm_scale, alpha, ha, mask)


def _check_backward(oracle, grads, q, k, v, do, m, causal, sm_scale, alpha, ha, mask):
    """grads (dq, dk, dv, dalpha) against autograd of the oracle, relative to the largest entry."""
    live = slice(None)
    if mask == "dead rows":  # no key: zero dq; the oracle only sees the other rows
        assert (grads[0][:, :, :5] == 0).all()
        live = slice(5, None)
        q, do, m, grads[0] = q[:, :, live], do[:, :, live], m[:, :, live], grads[0][:, :, live]
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    a = ha.detach().double().requires_grad_() if ha is not None else alpha
    m64 = None if m is None else (m if m.dtype == torch.bool else m.double())
    ref = oracle.attention(*exact, m64, causal, sm_scale, a, normalize=_package_normalizer(alpha))
    inputs = exact + ([a] if ha is not None else [])
    expected = torch.autograd.grad(ref, inputs, do.double())
    tol = 5e-3 if q.dtype == torch.float16 else 5e-5
    for got, want in zip(grads, expected):
        scale_ = want.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(got.double() / scale_, want / scale_, rtol=0, atol=tol)


def test_attention_backward_without_keys():
    """No key at all: zero output and zero dq (the backward allocates zeros, runs no kernel)."""
    q, k, v = _qkv(Nk=0)
    out, tau, row_max, tile_max, _ = attention_fwd.attention_forward(q, k, v, None, False, None,
                                                                     1.5)
    dq, dk, dv, _ = attention_bwd.attention_backward(torch.randn_like(out), q, k, v, tau, row_max,
                                                     tile_max, None, False, None, 1.5)
    assert (out == 0).all() and (dq == 0).all() and dk.shape == k.shape and dv.shape == v.shape


def test_attention_backward_needs_out_with_u_shift():
    q, k, v = _qkv()
    out, tau, row_max, tile_max, u_shift = attention_fwd.attention_forward(
        q, k, v, None, False, None, 1.5, for_backward=True)
    with pytest.raises(ValueError, match="pass the forward's out"):
        attention_bwd.attention_backward(torch.randn_like(out), q, k, v, tau, row_max, tile_max,
                                         None, False, None, 1.5, u_shift=u_shift)


ROW_CASES = [
    (7, 1.5), (100, 1.5), (1000, 1.5), (100, 2.0), (300, 1.3), (300, 2.7), (5000, 1.5),
    (9000, 1.3),  # a histogram start
]


@pytest.mark.parametrize("n, alpha", ROW_CASES)
def test_entmax_rows(oracle, n, alpha):
    """Row kernels against the bisection oracle and the entmax package's gradient, with rows of
    only -inf and rows of huge values (relative computation)."""
    x = torch.randn(6, n, device=DEV) * 3
    x[1, : n // 2] = -math.inf
    x[2] = -math.inf
    x[3] = x[3] * 1e-3 - 3e30
    p = entmax_rows.entmax_forward(x, alpha)
    torch.testing.assert_close(p.double(), oracle.entmax(x, alpha), rtol=0, atol=2e-6)
    g = torch.randn_like(x)
    dx, _ = entmax_rows.entmax_backward(g, p, alpha)
    xs = x[[0, 4, 5]].double().requires_grad_()
    ref = entmax_pkg.entmax_bisect(xs, alpha, dim=-1, n_iter=100)
    (expected,) = torch.autograd.grad(ref, xs, g[[0, 4, 5]].double())
    torch.testing.assert_close(dx[[0, 4, 5]].double(), expected, rtol=1e-4, atol=1e-5)
    assert (dx[2] == 0).all()


@pytest.mark.parametrize("layout", ["on chip", "on chip, histogram start", "streamed"])
def test_entmax_rows_per_row_alpha(layout, monkeypatch):
    """Per-row alpha with its gradient, on chip (with either start) and streamed in chunks."""
    if layout == "streamed":
        monkeypatch.setattr(entmax_rows, "MAX_ON_CHIP", 64)
        monkeypatch.setattr(entmax_rows, "STREAM_BLOCK", 64)
    monkeypatch.setattr(entmax_rows, "HISTOGRAM_MIN_BLOCK", 16 if "histogram" in layout else 1 << 30)
    x = torch.randn(5, 300, device=DEV) * 2
    ra = torch.rand(5, device=DEV) + 1.1
    p = entmax_rows.entmax_forward(x, 1.5, ra)
    g = torch.randn_like(x)
    dx, da = entmax_rows.entmax_backward(g, p, 1.5, ra, need_dalpha=True)
    xs = x.double().requires_grad_()
    a = ra.double().requires_grad_()
    ref = entmax_pkg.entmax_bisect(xs, a.unsqueeze(-1), dim=-1, n_iter=100)
    torch.testing.assert_close(p.double(), ref.detach(), rtol=0, atol=2e-6)
    exp_dx, exp_da = torch.autograd.grad(ref, (xs, a), g.double())
    torch.testing.assert_close(dx.double(), exp_dx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(da.double(), exp_da, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_entmax_rows_histogram_start(oracle, alpha, monkeypatch):
    """Rows that start from the histogram (every alpha here, short rows too) reach the oracle,
    with rows of only -inf and rows whose max stands far above the rest."""
    monkeypatch.setattr(entmax_rows, "HISTOGRAM_MODES", (0, 1, 2))
    monkeypatch.setattr(entmax_rows, "HISTOGRAM_MIN_BLOCK", 16)
    x = torch.randn(6, 700, device=DEV) * 2
    x[1] = -math.inf
    x[2, 5] = 40.0
    p = entmax_rows.entmax_forward(x, alpha)
    torch.testing.assert_close(p.double(), oracle.entmax(x, alpha), rtol=0, atol=2e-6)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.7])
def test_entmax_rows_streamed_long_rows(oracle, alpha, monkeypatch):
    """Rows longer than the on-chip limit are streamed: same values and gradients."""
    monkeypatch.setattr(entmax_rows, "MAX_ON_CHIP", 128)
    monkeypatch.setattr(entmax_rows, "STREAM_BLOCK", 128)
    x = torch.randn(3, 1000, device=DEV) * 3
    p = entmax_rows.entmax_forward(x, alpha)
    torch.testing.assert_close(p.double(), oracle.entmax(x, alpha), rtol=0, atol=2e-6)
    g = torch.randn_like(x)
    dx, _ = entmax_rows.entmax_backward(g, p, alpha)
    monkeypatch.setattr(entmax_rows, "MAX_ON_CHIP", 16384)
    dx_chip, _ = entmax_rows.entmax_backward(g, p, alpha)
    torch.testing.assert_close(dx, dx_chip, rtol=1e-5, atol=1e-6)


def test_entmax_rows_half_precision(oracle):
    """fp16 and bf16 rows (no tl.dot involved) against the oracle."""
    x = torch.randn(4, 700, device=DEV) * 4
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        p = entmax_rows.entmax_forward(x.to(dtype), 1.5)
        assert p.dtype == dtype
        torch.testing.assert_close(p.double(), oracle.entmax(x.to(dtype), 1.5), rtol=0, atol=tol)
