"""harness.loss against the paper's formula, the authors' BatchNorm formulation, and real DDP."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harness.loss import BarlowTwinsLoss, cross_correlation
from harness.model import BarlowTwins


def random_views(n=12, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Non-zero means and unequal spreads, so the normalisation has real work to do.
    z_a = torch.randn(n, d, generator=g, dtype=dtype) * 3 + 1
    z_b = z_a + 0.5 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a, z_b


def reference_loss(z_a, z_b, lambd, scale):
    """Eq. 1 of the paper, written out: standardise columns, C = A^T B / N, sum the terms."""
    z_a, z_b = z_a.double(), z_b.double()
    n, d = z_a.shape
    a = (z_a - z_a.mean(0)) / z_a.std(0, unbiased=False)
    b = (z_b - z_b.mean(0)) / z_b.std(0, unbiased=False)
    c = a.T @ b / n
    on_diag = sum((1 - c[i, i]) ** 2 for i in range(d))
    off_diag = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return scale * (on_diag + lambd * off_diag), on_diag, off_diag


def reference_c(z_a, z_b, normalize):
    """C element by element, as a list of lists of 0-d tensors: standardise each column (batch),
    each row (feature: one image's D values, mean 0, biased std 1) or nothing (none), then
    C_ij = sum_b a_bi b_bj / N."""
    z_a, z_b = z_a.double(), z_b.double()
    n, d = z_a.shape

    def standardise(z):
        if normalize == "batch":
            return (z - z.mean(0)) / z.std(0, unbiased=False)
        if normalize == "feature":
            rows = [(z[b] - z[b].mean()) / z[b].std(unbiased=False) for b in range(n)]
            return torch.stack(rows)
        return z

    a, b = standardise(z_a), standardise(z_b)
    c = [[sum(a[k, i] * b[k, j] for k in range(n)) / n for j in range(d)] for i in range(d)]
    return c


def reference_ablation_loss(z_a, z_b, lambd, scale, terms, normalize):
    """The paper's loss ablations written out element by element: standardise each column
    (batch), each row (feature: one image's D values, mean 0, biased std 1) or nothing (none);
    C_ij = sum_b a_bi b_bj / N; keep both terms, the invariance term or the redundancy one."""
    d = z_a.shape[1]
    c = reference_c(z_a, z_b, normalize)
    on_diag = sum((1 - c[i][i]) ** 2 for i in range(d))
    off_diag = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    kept = {"both": on_diag + lambd * off_diag, "invariance": on_diag,
            "redundancy": lambd * off_diag}[terms]
    return scale * kept, on_diag, off_diag


@pytest.mark.parametrize("terms", ["both", "invariance", "redundancy"])
@pytest.mark.parametrize("normalize", ["batch", "feature", "none"])
def test_ablations_match_their_formula(terms, normalize):
    z_a, z_b = random_views(n=7, d=5)
    parts = BarlowTwinsLoss(lambd=0.02, scale=0.5, eps=0.0, terms=terms,
                            normalize=normalize)(z_a, z_b)
    total, on_diag, off_diag = reference_ablation_loss(z_a, z_b, 0.02, 0.5, terms, normalize)
    torch.testing.assert_close(parts.total, total, rtol=1e-10, atol=0)
    torch.testing.assert_close(parts.on_diag, on_diag, rtol=1e-10, atol=0)
    torch.testing.assert_close(parts.off_diag, off_diag, rtol=1e-10, atol=0)


def reference_cross_entropy(z_a, z_b, lambd, scale, temperature, normalize="batch"):
    """The paper's cross-entropy with temperature (Section 4, loss-function ablations), one
    element at a time, times scale:
        -log sum_i exp(C_ii / t) + lambd * log sum_i sum_{j!=i} exp(max(C_ij, 0) / t)"""
    c = reference_c(z_a, z_b, normalize)
    d = len(c)
    on = sum(torch.exp(c[i][i] / temperature) for i in range(d))
    off = sum(torch.exp(torch.clamp(c[i][j], min=0) / temperature)
              for i in range(d) for j in range(d) if j != i)
    return scale * (-torch.log(on) + lambd * torch.log(off))


@pytest.mark.parametrize("temperature, lambd, normalize", [(0.1, 1.0, "batch"), (0.5, 0.3, "batch"),
                                                           (0.2, 2.0, "feature")])
def test_cross_entropy_matches_its_formula(temperature, lambd, normalize):
    z_a, z_b = (z.requires_grad_() for z in random_views(n=7, d=5))
    loss = BarlowTwinsLoss(lambd=lambd, scale=0.5, eps=0.0, normalize=normalize,
                           kind="cross_entropy", temperature=temperature)
    parts = loss(z_a, z_b)
    expected = reference_cross_entropy(z_a, z_b, lambd, 0.5, temperature, normalize)
    torch.testing.assert_close(parts.total, expected, rtol=1e-10, atol=0)
    # The gradient too: max(C_ij, 0) passes none for negative correlations.
    ours = torch.autograd.grad(parts.total, (z_a, z_b))
    ref = torch.autograd.grad(expected, (z_a, z_b))
    for g_ours, g_ref in zip(ours, ref):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)
    # The reported parts stay eq. 1's, so that runs of either kind compare on them.
    _, on_diag, off_diag = reference_ablation_loss(z_a, z_b, lambd, 0.5, "both", normalize)
    torch.testing.assert_close(parts.on_diag, on_diag, rtol=1e-10, atol=0)
    torch.testing.assert_close(parts.off_diag, off_diag, rtol=1e-10, atol=0)


def test_cross_entropy_is_finite_at_a_small_temperature_in_float32():
    # C_ii / t reaches 1 / t = 200: a plain sum of exps overflows float32 (e^89 already does);
    # the reference, in float64, does not (up to e^709).
    z_a, z_b = random_views(n=64, d=8, dtype=torch.float32)
    parts = BarlowTwinsLoss(lambd=1.0, eps=0.0, kind="cross_entropy", temperature=5e-3)(z_a, z_b)
    assert torch.isfinite(parts.total)
    expected = reference_cross_entropy(z_a.double(), z_b.double(), 1.0, 1.0, 5e-3)
    assert torch.isfinite(expected) and expected.abs() > 100
    torch.testing.assert_close(parts.total.double(), expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("kwargs, words", [
    (dict(kind="cross_entropy"), "temperature > 0"),
    (dict(kind="cross_entropy", temperature=0.0), "temperature > 0"),
    (dict(kind="cross_entropy", temperature=0.1, terms="invariance"), "keeps both"),
    (dict(temperature=0.1), "kind='cross_entropy' only"),
    (dict(kind="infonce"), "kind='infonce'"),
])
def test_rejects_impossible_kind_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BarlowTwinsLoss(**kwargs)


def test_each_ablation_trains_only_its_terms():
    """The gradient of the invariance-only loss is that of the on-diagonal term alone, and the
    redundancy-only one that of lambda times the off-diagonal term: nothing else leaks in."""
    z_a, z_b = (z.requires_grad_() for z in random_views())
    for terms, pick in (("invariance", lambda p: p.on_diag), ("redundancy", lambda p: 0.02 * p.off_diag)):
        ours = torch.autograd.grad(BarlowTwinsLoss(0.02, eps=0.0, terms=terms)(z_a, z_b).total, z_a)
        ref = torch.autograd.grad(pick(BarlowTwinsLoss(0.02, eps=0.0)(z_a, z_b)), z_a)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("lambd, scale", [(0.0051, 1.0), (0.02, 0.1), (1.0, 2.5)])
def test_matches_paper_formula(lambd, scale):
    z_a, z_b = random_views()
    parts = BarlowTwinsLoss(lambd=lambd, scale=scale, eps=0.0)(z_a, z_b)
    total, on_diag, off_diag = reference_loss(z_a, z_b, lambd, scale)
    torch.testing.assert_close(parts.total, total, rtol=1e-10, atol=0)
    torch.testing.assert_close(parts.on_diag, on_diag, rtol=1e-10, atol=0)
    # off_diag is reported unweighted: no lambda, no scale.
    torch.testing.assert_close(parts.off_diag, off_diag, rtol=1e-10, atol=0)


def test_gradient_matches_paper_formula():
    z_a, z_b = (z.requires_grad_() for z in random_views())
    ours = torch.autograd.grad(BarlowTwinsLoss(0.0051, eps=0.0)(z_a, z_b).total, (z_a, z_b))
    ref = torch.autograd.grad(reference_loss(z_a, z_b, 0.0051, 1.0)[0], (z_a, z_b))
    for g_ours, g_ref in zip(ours, ref):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


def test_matches_authors_batchnorm_formulation():
    """Default eps equals the authors' code: bn = BatchNorm1d(D, affine=False) in training mode."""
    z_a, z_b = random_views(n=32, d=24)
    lambd = 0.0051
    bn = nn.BatchNorm1d(24, affine=False).double()
    c = bn(z_a).T @ bn(z_b) / 32
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    off_diag = (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())
    parts = BarlowTwinsLoss(lambd=lambd)(z_a, z_b)
    torch.testing.assert_close(cross_correlation(z_a, z_b), c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts.total, on_diag + lambd * off_diag, rtol=1e-10, atol=0)


def test_invariant_to_per_feature_affine_rescaling():
    z_a, z_b = random_views()
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(2, 16, generator=g, dtype=torch.float64) * 10 + 0.1  # per view, per column
    shift = torch.randn(2, 16, generator=g, dtype=torch.float64) * 5
    loss = BarlowTwinsLoss(eps=0.0)
    before = loss(z_a, z_b)
    after = loss(z_a * scale[0] + shift[0], z_b * scale[1] + shift[1])
    for x, y in zip(before, after):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_identical_views_have_zero_invariance_term():
    z, _ = random_views(n=64, d=32, dtype=torch.float32)
    parts = BarlowTwinsLoss()(z, z)
    # C_ii = var / (var + eps): within ~1e-5 of 1, so (1 - C_ii)^2 summed over 32 features < 1e-6.
    assert parts.on_diag.item() < 1e-6
    assert parts.off_diag.item() > 0


def test_float32_under_cpu_autocast():
    z_a, z_b = random_views(dtype=torch.float32)
    expected = BarlowTwinsLoss()(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = BarlowTwinsLoss()(z_a, z_b)
        from_bf16 = BarlowTwinsLoss()(z_a.bfloat16(), z_b.bfloat16())
    assert got.total.dtype == from_bf16.total.dtype == torch.float32
    # Without the autocast guard the D x D matmul would run in bfloat16 (3 significant digits).
    torch.testing.assert_close(got.total, expected.total, rtol=1e-6, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_float32_under_cuda_autocast():
    z_a, z_b = (z.cuda() for z in random_views(n=256, d=512, dtype=torch.float32))
    expected = BarlowTwinsLoss()(z_a, z_b)
    with torch.autocast("cuda", dtype=torch.float16):
        got = BarlowTwinsLoss()(z_a, z_b)
        from_half = BarlowTwinsLoss()(z_a.half(), z_b.half())
    assert got.total.dtype == from_half.total.dtype == torch.float32
    torch.testing.assert_close(got.total, expected.total, rtol=1e-5, atol=0)
    torch.testing.assert_close(from_half.total, expected.total, rtol=1e-2, atol=0)


@pytest.mark.parametrize("kwargs", [dict(lambd=0.0), dict(lambd=-1.0), dict(scale=0.0),
                                    dict(scale=-0.1), dict(eps=-1e-5)])
def test_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        BarlowTwinsLoss(**kwargs)


@pytest.mark.parametrize("shape_a, shape_b", [((4, 8), (4, 9)), ((4, 8), (5, 8)), ((8,), (8,)),
                                              ((1, 8), (1, 8))])
def test_rejects_bad_shapes(shape_a, shape_b):
    with pytest.raises(ValueError):
        BarlowTwinsLoss()(torch.randn(shape_a), torch.randn(shape_b))


# --- data parallelism: a real 2-process gloo DistributedDataParallel run -------------------------

GLOBAL_BATCH, IN_DIM = 16, 6
SHARDS = (6, 10)  # uneven on purpose: the last batch of an epoch need not split evenly
LAMBD = 0.02


def tiny_model() -> BarlowTwins:
    # No BatchNorm: SyncBatchNorm only synchronises on GPU, and per-worker BN statistics would
    # (rightly) differ from the single-process run. The loss's own normalisation is what's tested.
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(IN_DIM, 12), nn.ReLU(), nn.Linear(12, 10))
    return BarlowTwins(backbone, feature_dim=10, projector="16").double()


def global_views():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(GLOBAL_BATCH, IN_DIM, generator=g, dtype=torch.float64)
    return x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype), x * 1.5 - 0.2


def _ddp_worker(rank, init_file, out_dir, normalize="batch"):
    # Keep gloo on the loopback interface: nothing but 127.0.0.1 is used.
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=len(SHARDS))
    try:
        model = tiny_model()
        ddp = DistributedDataParallel(model)
        x_a, x_b = global_views()
        start = sum(SHARDS[:rank])
        shard = slice(start, start + SHARDS[rank])
        # Two forwards (one per view), one backward: exactly how the trainer drives it.
        parts = BarlowTwinsLoss(lambd=LAMBD, normalize=normalize)(ddp(x_a[shard]).z,
                                                                 ddp(x_b[shard]).z)
        parts.total.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        torch.save({"loss": parts.total.detach(), "grads": grads}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("normalize", ["batch", "feature"])
def test_ddp_loss_and_gradients_equal_single_process_on_global_batch(tmp_path, normalize):
    model = tiny_model()
    x_a, x_b = global_views()
    expected = BarlowTwinsLoss(lambd=LAMBD, normalize=normalize)(model(x_a).z, model(x_b).z).total
    expected.backward()

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path), normalize),
             nprocs=len(SHARDS), join=True)

    for rank in range(len(SHARDS)):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        # Every rank sees the global loss, not the loss of its shard.
        torch.testing.assert_close(result["loss"], expected.detach(), rtol=1e-10, atol=0)
        for name, p in model.named_parameters():
            # DDP averages over ranks; the autograd all_reduce makes that average the full gradient
            # (a plain all_reduce would give 1/world_size of it).
            torch.testing.assert_close(result["grads"][name], p.grad, rtol=1e-8, atol=1e-12,
                                       msg=lambda m, name=name: f"{name}: {m}")
