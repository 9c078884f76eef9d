"""Memory of the DreamShot attention ops: the CPU peak-memory probe, the byte budgets of the blockwise
statistics (exact whatever the budget), and extra memory linear in tokens at a real head count."""

import math

import pytest
import torch

from dreamshot.attention_stats import MIN_TEMP_BUDGET, character_mass, key_set_logsumexp, temp_budget
from dreamshot.bench.measure import ShapeOnly, cpu_peak_bytes, profile_cpu, sdpa_kernels
from dreamshot.bench.ops_bench import MODEL_SIZES, bench_ops
from dreamshot.layout import StoryLayout
from dreamshot.roles import auto_regions, build_role_map, racl_loss

MiB = 2 ** 20


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- the probe ----------------------------------------------------------------------------------
def test_cpu_peak_probe_counts_live_allocations_at_their_peak():
    held = torch.empty(MiB // 4)   # allocated before: not counted, not freed

    def pattern():
        a = torch.empty(4 * MiB // 4)
        view = a[:10]                 # keeps a's 4 MiB alive through the view
        del a
        tmp = torch.empty(2 * MiB // 4)
        del tmp                       # peak 6 MiB here
        return view, torch.empty(MiB // 4)

    assert cpu_peak_bytes(pattern) == 6 * MiB
    kept = pattern()
    # the running total still holds ``kept``: a later call is measured from where it starts
    assert cpu_peak_bytes(lambda: torch.empty(3 * MiB // 4)) == 3 * MiB
    x = torch.randn(64, 64, requires_grad=True)

    def saved_for_backward():   # autograd keeps exp's output (64 KiB) for backward: counted
        return (x.exp() * 2.0).sum()

    assert cpu_peak_bytes(saved_for_backward) >= 2 * 64 * 64 * 4
    del held, kept


def test_sdpa_kernel_names():
    x = _randn(1, 2, 16, 8)
    assert sdpa_kernels(lambda: torch.nn.functional.scaled_dot_product_attention(x, x, x)) == ["flash (cpu)"]
    assert sdpa_kernels(lambda: x @ x.transpose(-1, -2)) == []


# -- budgeted statistics: exact, within the budget ----------------------------------------------
def _dense_logits(q, k, heads, rows, keys, bias=None):
    b, n, inner = q.shape
    d = inner // heads
    qh, kh = (t.view(b, n, heads, d).transpose(1, 2) for t in (q, k))
    logits = qh[:, :, rows] @ kh[:, :, keys].transpose(-1, -2) / math.sqrt(d)
    return logits if bias is None else logits + bias[keys]


@pytest.mark.parametrize("budget", [1, 40_000, 10 ** 9])
def test_key_set_logsumexp_is_exact_for_any_budget(budget):
    heads, n = 4, 60
    q, k = _randn(2, n, heads * 16, seed=1), _randn(2, n, heads * 16, seed=2)
    rows = torch.tensor([50, 3, 4, 5, 6, 59, 20])                  # runs and scattered rows
    sets = [torch.arange(0, 12), torch.tensor([40, 13, 27]), None]  # a run, scattered, all keys
    bias = torch.zeros(n)
    bias[13] = -math.inf
    bias[:5] = -1.5
    got = key_set_logsumexp(q, k, heads, rows, sets, 16 ** -0.5, budget, batch=slice(1, 2), key_bias=bias)
    for s, keys in enumerate(sets):
        keys = torch.arange(n) if keys is None else keys
        expect = torch.logsumexp(_dense_logits(q[1:], k[1:], heads, rows, keys, bias), dim=-1)
        torch.testing.assert_close(got[..., s], expect, rtol=1e-5, atol=1e-5)


def test_key_set_logsumexp_stays_within_its_budget():
    heads, n = 8, 2000
    q, k = _randn(2, n, heads * 32, seed=3), _randn(2, n, heads * 32, seed=4)
    rows, keys = torch.arange(500, 2000), torch.arange(0, 500)
    budget = q.numel() * q.element_size() // 2
    result_bytes = 2 * heads * len(rows) * 4
    peak = cpu_peak_bytes(lambda: key_set_logsumexp(q, k, heads, rows, [keys], 32 ** -0.5, budget))
    dense_logits = 2 * heads * len(rows) * len(keys) * 4
    assert peak <= budget + 2 * result_bytes + 64 * 1024
    assert peak < dense_logits / 4


def test_default_budget_is_the_bytes_of_q_with_a_floor():
    q = torch.empty(2, 14040, 1536, dtype=torch.bfloat16)
    assert temp_budget(q) == q.numel() * 2
    assert temp_budget(q[:, :10]) == MIN_TEMP_BUDGET


def _dense_mass(q, k, heads, rows, keys, cmat):
    return torch.softmax(_dense_logits(q, k, heads, rows, keys), dim=-1) @ cmat


@pytest.mark.parametrize("budget", [1, 30_000, 10 ** 9])
def test_character_mass_and_its_gradients_are_exact_for_any_budget(budget):
    heads, n, chars = 3, 48, 2
    q = _randn(2, n, heads * 8, seed=5).requires_grad_()
    k = _randn(2, n, heads * 8, seed=6).requires_grad_()
    rows = torch.tensor([30, 31, 32, 33, 40, 31, 45, 20])      # 31 twice: overlapping regions
    keys = torch.cat([torch.arange(0, 10), torch.tensor([17, 12, 15])])
    cmat = torch.zeros(len(keys), chars)
    cmat[:10, 0] = 1.0
    cmat[10:, 1] = torch.tensor([1.0, 0.5, 0.25])
    w = _randn(2, heads, len(rows), chars, seed=7)
    got = character_mass(q, k, heads, rows, keys, cmat, 8 ** -0.5, budget)
    expect = _dense_mass(q, k, heads, rows, keys, cmat)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    gq, gk = torch.autograd.grad((got * w).sum(), (q, k))
    rq, rk = torch.autograd.grad((expect * w).sum(), (q, k))
    torch.testing.assert_close(gq, rq, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gk, rk, rtol=1e-4, atol=1e-6)


def _story_role_map(size=64):
    lay = StoryLayout(num_refs=3, num_shots=2, width=size, height=size, ref_characters=(0, 1, 1))
    mask = torch.zeros(size, size)
    mask[8:40, 4:30] = 1.0
    return lay, build_role_map(lay, ref_masks=[mask, None, mask.flip(0)],
                               shot_regions=[{0: (0, 0, 0.6, 1), 1: (0.4, 0, 1, 1)}, {1: mask}])


def test_racl_loss_within_a_tiny_budget_equals_the_unbudgeted_loss_and_gradients():
    lay, rm = _story_role_map()
    q = _randn(2, lay.num_tokens, 4 * 8, seed=8).requires_grad_()
    k = _randn(2, lay.num_tokens, 4 * 8, seed=9).requires_grad_()
    for kind in ("mass", "log"):
        whole = racl_loss(q, k, 4, rm, kind=kind, budget_bytes=10 ** 9)      # one block
        tiny = racl_loss(q, k, 4, rm, kind=kind, budget_bytes=2_000)         # 1-row blocks, key blocks
        torch.testing.assert_close(tiny, whole)
        for a, b in zip(torch.autograd.grad(tiny, (q, k)), torch.autograd.grad(whole, (q, k))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_racl_loss_memory_is_bounded_by_its_budget_not_regions_times_references():
    # 2 refs + 4 shots of 64x64 (16 tokens/frame), 8 heads of 32: a budget far below the dense
    # [regions x references] probabilities, forward and backward
    lay = StoryLayout(num_refs=2, num_shots=4, width=256, height=256)
    rm = build_role_map(lay, shot_regions=[{0: (0, 0, 0.5, 1), 1: (0.5, 0, 1, 1)}] * 4)
    q = _randn(1, lay.num_tokens, 256, seed=10).requires_grad_()
    k = _randn(1, lay.num_tokens, 256, seed=11).requires_grad_()
    budget = 2 ** 20

    def train():
        racl_loss(q, k, 8, rm, budget_bytes=budget).backward()
        q.grad = k.grad = None

    peak = cpu_peak_bytes(train)
    grads = 2 * q.numel() * 4
    dk_keys = 2 * 256 * 256 * 4          # float32 accumulator of the reference keys' gradient
    rows, refs = 4 * 256, 2 * 256
    dense = 8 * rows * refs * 4
    assert peak <= budget + grads + dk_keys + 256 * 1024
    assert peak < dense


# -- auto regions: budget-independent -------------------------------------------------------
def test_auto_regions_do_not_depend_on_the_budget():
    lay, rm = _story_role_map()
    q, k = _randn(2, lay.num_tokens, 4 * 8, seed=12), _randn(2, lay.num_tokens, 4 * 8, seed=13)
    shots = [torch.arange(*span) for span in rm.shot_spans]
    casts = [(0, 1), (1, 0)]
    a = auto_regions(q, k, 4, shots, casts, rm.ref_hard_tokens, budget_bytes=1)
    b = auto_regions(q, k, 4, shots, casts, rm.ref_hard_tokens, budget_bytes=10 ** 9)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert {int(g) for x in a for g in x} <= {1, 2}


# -- every op at a real head count: shape accounting, checked against real runs -----------------
def test_shape_accounting_allocates_what_a_real_run_does():
    """ShapeOnly (full-size figures on a CPU) against a real bf16 run of every op at the 1.3B width
    and head count: the same bytes to the byte, outside what CPU kernels allocate and free inside
    themselves (flash attention's per-thread buffers, oneDNN scratchpads: their size follows the
    machine's thread count and instruction set, and GPU kernels have none of that size). Holds on
    any CPU: nothing here is compared with one machine's kernel workspace."""
    size = MODEL_SIZES["1.3B"]
    real = {r["op"]: r for r in bench_ops(size, torch.device("cpu"), frame=(128, 64), repeats=1, warmup=0)}
    shape = {r["op"]: r for r in bench_ops(size, torch.device("cpu"), frame=(128, 64), shape_only=True)}
    assert len(real) == len(shape) == 7
    for op, r in real.items():
        s = shape[op]
        assert r["ops_mib"] == s["ops_mib"], op
        assert r["plain_ops_mib"] == s["plain_ops_mib"], op
        assert r["kernels"] == s["kernels"], op
        # kernel workspaces never outlive their kernel call, so they never stack on each other
        assert r["ops_mib"] <= r["extra_mib"] <= r["ops_mib"] + r["workspace_mib"] + 1e-9, op
        assert r["extra_mib"] > 0 and r["ops_mib"] > 0, op


def test_cpu_probe_splits_kernel_workspace_from_what_ops_hold():
    """A kernel that allocates 2 MiB for itself and returns 1 MiB: the whole peak 3 MiB, the ops' 1 MiB,
    the workspace 2 MiB (a custom op: its body runs as one kernel call, like a C++ kernel's)."""
    @torch.library.custom_op("dreamshot_test::scratch_kernel", mutates_args=())
    def scratch_kernel(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(MiB // 4)
        scratch = torch.empty(2 * MiB // 4)
        del scratch
        return out

    @scratch_kernel.register_fake
    def _(x):
        return x.new_empty(MiB // 4)

    x = torch.zeros(4)
    m = profile_cpu(lambda: scratch_kernel(x))
    assert (m.peak_bytes, m.ops_peak_bytes, m.kernel_workspace_bytes) == (3 * MiB, MiB, 2 * MiB)
    with ShapeOnly():   # the accounting allocates the output only (the kernel never runs)
        m = profile_cpu(lambda: scratch_kernel(x))
    assert (m.peak_bytes, m.ops_peak_bytes, m.kernel_workspace_bytes) == (MiB, MiB, 0)


@pytest.fixture(scope="module")
def ops_full_and_half():
    size = MODEL_SIZES["1.3B"]    # 12 heads of 128, width 1536, batch 2, bf16, 3 refs + 6 shots
    full = bench_ops(size, torch.device("cpu"), shape_only=True)
    half = bench_ops(size, torch.device("cpu"), frame=(416, 240), shape_only=True)
    return full, half


def test_every_op_within_1_2x_of_plain_attention_at_1_3b_480p(ops_full_and_half):
    full, _ = ops_full_and_half
    assert full[0]["tokens"] == 9 * 1560
    assert len(full) == 7
    for r in full:
        assert r["mem_ratio"] <= 1.2, r


def test_every_op_extra_memory_is_linear_in_tokens(ops_full_and_half):
    """4x the tokens: each op's ratio to plain attention (whose extra memory is its output, linear)
    does not grow; the two budgeted ops may fill more of their budget (the bytes of q, linear too)
    at one size than at another, so for them the bound is the budget itself."""
    full, half = ops_full_and_half
    growth = full[0]["tokens"] / half[0]["tokens"]
    assert growth == 4
    budgeted = {"auto regions (3-character casts)": 0, "RACL loss (training), forward + backward": 3}
    for f, h in zip(full, half):
        assert f["op"] == h["op"]
        if f["op"] in budgeted:   # budget + (training) the q and k gradients and the keys' accumulator
            q_mib = 2 * f["tokens"] * MODEL_SIZES["1.3B"].dim * 2 / MiB
            assert f["extra_mib"] <= (1 + budgeted[f["op"]]) * q_mib * 1.05, f["op"]
        else:
            assert f["extra_mib"] <= growth * h["extra_mib"] * 1.02, f["op"]
            assert f["mem_ratio"] <= h["mem_ratio"] * 1.02, f["op"]


@pytest.mark.parametrize("cpu", [
    {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    {"OMP_NUM_THREADS": "3", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
], ids=["1-thread-no-vector-isa", "3-threads-avx2"])
def test_shape_accounting_check_holds_on_other_cpus(cpu):
    """The check above on CPUs unlike this one, as far as one machine can play them: another thread
    count (CPU flash attention's buffers are per thread) and an older instruction set for PyTorch's
    own kernels and oneDNN's (no AVX-512, no bf16 instructions: other bf16 matmul paths)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, **cpu}
    test = f"{Path(__file__).resolve()}::test_shape_accounting_allocates_what_a_real_run_does"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout
