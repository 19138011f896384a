"""harness.optim: LARS (both variants) against hand-computed steps, the groups, the schedule."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.optim import LARS, apply_lr_schedule, lr_at, param_groups, scaled_lr

ETA, WD, MOMENTUM = 0.02, 1e-2, 0.9


def _param(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64))


def _grad(like, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(like.shape, generator=g, dtype=like.dtype)


def test_two_steps_match_hand_computation_for_weight_and_bias():
    w, b = _param(4, 3, seed=0), _param(3, seed=1)
    lr_w, lr_b = 0.7, 0.05
    opt = LARS([dict(params=[w], lr=lr_w), dict(params=[b], lr=lr_b, lars_exclude=True)],
               lr=0.0, weight_decay=WD, momentum=MOMENTUM, eta=ETA)
    w_ref, b_ref = w.detach().clone(), b.detach().clone()
    mu_w, mu_b = torch.zeros_like(w_ref), torch.zeros_like(b_ref)
    for step in range(2):
        g_w, g_b = _grad(w, 10 + step), _grad(b, 20 + step)
        w.grad, b.grad = g_w.clone(), g_b.clone()
        opt.step()

        # Weight: decay, trust ratio eta * ||w|| / ||g + wd w||, momentum, update.
        u = g_w + WD * w_ref
        u = u * (ETA * w_ref.norm() / u.norm())
        mu_w = MOMENTUM * mu_w + u
        w_ref = w_ref - lr_w * mu_w
        # Bias: excluded from both decay and adaptation, so plain SGD with momentum.
        mu_b = MOMENTUM * mu_b + g_b
        b_ref = b_ref - lr_b * mu_b

        torch.testing.assert_close(w.detach(), w_ref, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.detach(), b_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], mu_w, rtol=1e-12, atol=1e-14)


def test_zero_param_norm_uses_trust_ratio_one():
    w = nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    g = _grad(w, 0)
    w.grad = g.clone()
    LARS([w], lr=0.1, weight_decay=WD, eta=ETA).step()
    # eta * 0 / ||g|| would freeze a zero-initialised weight forever; the ratio is 1 instead.
    torch.testing.assert_close(w.detach(), -0.1 * g, rtol=1e-12, atol=0)


def test_zero_update_norm_leaves_param_finite_and_unchanged():
    w = _param(3, 3, seed=0)
    before = w.detach().clone()
    w.grad = torch.zeros_like(w)
    LARS([w], lr=0.1, weight_decay=0.0, eta=ETA).step()  # ||g + 0 * w|| = 0: no 0/0
    torch.testing.assert_close(w.detach(), before, rtol=0, atol=0)


def test_param_without_grad_is_skipped():
    w, v = _param(3, 3, seed=0), _param(3, 3, seed=1)
    before = v.detach().clone()
    w.grad = _grad(w, 2)
    opt = LARS([w, v], lr=0.1)
    opt.step()
    assert torch.equal(v.detach(), before) and v not in opt.state
    assert w in opt.state


# --- solo-learn's variant --------------------------------------------------------------------

def _solo_learn_step(p, g, buf, *, lr, wd, eta, momentum, eps=1e-8):
    """vturrisi/solo-learn solo/utils/lars.py, LARS.step for one parameter, written out as there
    with clip_lr=True, exclude_bias_n_norm=True, dampening 0, no nesterov.

    Returns the new p and momentum buffer, and whether min(ratio / lr, 1) chose the 1 (None when
    no ratio was applied).
    """
    d_p, clipped = g, None
    p_norm, g_norm = torch.norm(p), torch.norm(g)
    if p.ndim != 1:                                   # exclude_bias_n_norm
        if p_norm != 0 and g_norm != 0:
            lars_lr = p_norm / (g_norm + p_norm * wd + eps)
            lars_lr *= eta
            clipped = bool(lars_lr / lr >= 1)         # lr 0: ratio / 0 is inf
            lars_lr = min(lars_lr / lr, 1)            # clip_lr
            d_p = d_p.add(p, alpha=wd)
            d_p *= lars_lr
    buf = torch.clone(d_p) if buf is None else buf.mul(momentum).add(d_p)
    return p.add(buf, alpha=-lr), buf, clipped


def test_solo_learn_variant_matches_solo_learn_step_by_step():
    # Two weights, the second with a 50x larger gradient (a small ratio: never clipped past
    # lr 0), and a bias; lr as a warm-up then a decay, starting at 0 like lr_at's step 0.
    w1, w2, b = _param(4, 3, seed=0), _param(5, 2, seed=1), _param(3, seed=2)
    lrs = [0.0, 0.005, 0.01, 0.1, 0.3, 0.25, 0.1, 0.001]
    opt = LARS([dict(params=[w1, w2], lr=0.0, weight_decay=WD),
                dict(params=[b], lr=0.0, weight_decay=0.0, lars_exclude=True)],
               lr=0.0, momentum=MOMENTUM, eta=ETA, variant="solo-learn", clip_lr=True)
    ref = {p: (p.detach().clone(), None) for p in (w1, w2, b)}
    clipped = []
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for i, p in enumerate((w1, w2, b)):
            p.grad = _grad(p, 100 * step + i) * (50.0 if p is w2 else 1.0)
        opt.step()
        for p in (w1, w2, b):
            # solo-learn puts the bias in the decayed group and skips it by ndim; ours has wd 0.
            new_p, buf, was_clipped = _solo_learn_step(ref[p][0], p.grad, ref[p][1], lr=lr, wd=WD,
                                                       eta=ETA, momentum=MOMENTUM)
            ref[p] = (new_p, buf)
            clipped.append(was_clipped)
            assert torch.isfinite(p).all() and torch.isfinite(opt.state[p]["momentum_buffer"]).all()
            torch.testing.assert_close(p.detach(), new_p, rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=1e-12,
                                       atol=1e-15)
    # The clip both chose the 1 (lr 0 and the warm-up) and left the ratio / lr; the bias none.
    assert True in clipped and False in clipped
    assert clipped[2::3] == [None] * len(lrs)


def test_solo_learn_variant_lr_zero_moves_nothing_and_makes_no_inf():
    w = _param(3, 3, seed=0)
    before, g = w.detach().clone(), _grad(w, 1)
    w.grad = g.clone()
    opt = LARS([w], lr=0.0, weight_decay=WD, eta=ETA, variant="solo-learn", clip_lr=True)
    opt.step()
    # solo-learn's min(ratio / 0, 1) = min(inf, 1) = 1: the unscaled update enters the momentum.
    assert torch.equal(w.detach(), before)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], g + WD * before, rtol=1e-12,
                               atol=0)


def test_solo_learn_variant_zero_norms_skip_ratio_and_decay():
    w, z = _param(3, 3, seed=0), nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    before, g = w.detach().clone(), _grad(z, 1)
    w.grad, z.grad = torch.zeros_like(w), g.clone()
    LARS([w, z], lr=0.1, weight_decay=WD, eta=ETA, variant="solo-learn", clip_lr=True).step()
    assert torch.equal(w.detach(), before)        # ||g|| = 0: no weight decay either
    torch.testing.assert_close(z.detach(), -0.1 * g, rtol=1e-12, atol=0)  # ||p|| = 0: ratio 1


def test_state_dict_from_before_the_variants_loads_as_barlowtwins():
    w = _param(3, 3, seed=0)
    state = LARS([w], lr=0.1).state_dict()
    for group in state["param_groups"]:
        for key in ("variant", "clip_lr", "eps"):
            del group[key]
    opt = LARS([w], lr=0.1, variant="solo-learn", clip_lr=True)
    opt.load_state_dict(state)
    assert (opt.param_groups[0]["variant"], opt.param_groups[0]["clip_lr"]) == ("barlowtwins", False)


def test_build_optimizer_passes_the_configs_variant():
    from harness.config import load_config
    from harness.pretrain.step import build_optimizer

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    for name, variant, clip in [("imagenet_paper.yaml", "barlowtwins", False),
                                ("cifar10.yaml", "solo-learn", True)]:
        opt = build_optimizer(_net(), load_config(experiments / name, check_data=False))
        assert {(g["variant"], g["clip_lr"]) for g in opt.param_groups} == {(variant, clip)}


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(lr=0.1, weight_decay=-1e-6),
                                    dict(lr=0.1, momentum=1.0), dict(lr=0.1, eta=0.0),
                                    dict(lr=0.1, variant="lightly"), dict(lr=0.1, clip_lr=True),
                                    dict(lr=0.1, variant="solo-learn", eps=-1.0)])
def test_lars_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        LARS([_param(2, 2, seed=0)], **kwargs)


def _net():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2, bias=False))


def test_param_groups_split_weights_from_biases_and_norm():
    net = _net()
    groups = param_groups(net, lr_weights=0.2, lr_biases=0.0048, weight_decay=1e-6)
    by_name = {g["name"]: g for g in groups}
    weights, biases = by_name["weights"], by_name["biases_and_norm"]
    assert [id(p) for p in weights["params"]] == [id(net[0].weight), id(net[3].weight)]
    assert [id(p) for p in biases["params"]] == [id(net[0].bias), id(net[1].weight),
                                                 id(net[1].bias)]

    def flags(g):
        return g["base_lr"], g["weight_decay"], g["lars_exclude"]

    assert flags(weights) == (0.2, 1e-6, False)
    assert flags(biases) == (0.0048, 0.0, True)


def test_param_groups_skip_frozen_params_and_empty_groups():
    net = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2))
    net[1].requires_grad_(False)
    groups = param_groups(net, lr_weights=0.2, lr_biases=0.0048, weight_decay=1e-6)
    assert [g["name"] for g in groups] == ["weights"]
    assert len(groups[0]["params"]) == 1


def test_param_groups_drive_lars_exclusions():
    net = _net().double()
    opt = LARS(param_groups(net, lr_weights=0.5, lr_biases=0.5, weight_decay=0.1), lr=0.0, eta=ETA)
    bias_before = net[0].bias.detach().clone()
    net(torch.randn(5, 4, dtype=torch.float64)).sum().backward()
    bias_grad = net[0].bias.grad.clone()
    opt.step()
    torch.testing.assert_close(net[0].bias.detach(), bias_before - 0.5 * bias_grad, rtol=1e-12,
                               atol=1e-14)


# --- schedule --------------------------------------------------------------------------------

TOTAL, WARMUP, BASE = 100, 10, 2.0


def _lr(step, **kw):
    return lr_at(step, total_steps=TOTAL, warmup_steps=WARMUP, base_lr=BASE, **kw)


def test_schedule_key_values():
    assert _lr(0) == 0.0                                     # warm-up starts from 0
    assert _lr(5) == pytest.approx(1.0)                      # linear
    assert _lr(WARMUP) == pytest.approx(BASE)                # peak at the end of warm-up
    # Half-way through the decay, cos(pi/2) = 0: q = 0.5, lr = 0.5 * base + 0.5 * end.
    assert _lr(55) == pytest.approx(0.5 * BASE + 0.5 * 0.001 * BASE)
    # A third of the way (30 of 90 decay steps): q = (1 + cos(pi/3)) / 2 = 0.75.
    q = (1 + math.cos(math.pi / 3)) / 2
    assert _lr(WARMUP + 30) == pytest.approx(BASE * q + 0.001 * BASE * (1 - q))
    assert _lr(WARMUP + 30) == pytest.approx(0.75 * BASE + 0.25 * 0.001 * BASE)
    assert _lr(TOTAL) == pytest.approx(0.001 * BASE)         # end at end_factor x base
    assert _lr(TOTAL + 50) == pytest.approx(0.001 * BASE)    # and held past it
    assert _lr(TOTAL, end_factor=0.0) == 0.0


def test_schedule_is_monotone_after_warmup():
    lrs = [_lr(s) for s in range(WARMUP, TOTAL + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_schedule_without_warmup_starts_at_peak():
    assert lr_at(0, total_steps=10, warmup_steps=0, base_lr=1.5) == 1.5


@pytest.mark.parametrize("kwargs", [dict(step=-1), dict(total_steps=0, warmup_steps=0),
                                    dict(warmup_steps=TOTAL + 1), dict(warmup_steps=-1),
                                    dict(base_lr=-0.1), dict(end_factor=1.5)])
def test_schedule_rejects_bad_arguments(kwargs):
    args = dict(step=0, total_steps=TOTAL, warmup_steps=WARMUP, base_lr=BASE) | kwargs
    with pytest.raises(ValueError):
        lr_at(args.pop("step"), **args)


def test_apply_lr_schedule_sets_each_group_from_its_own_base():
    opt = LARS(param_groups(_net(), lr_weights=0.4, lr_biases=0.01, weight_decay=0.0), lr=0.0)
    lrs = apply_lr_schedule(opt, 55, total_steps=TOTAL, warmup_steps=WARMUP)
    assert lrs == pytest.approx([0.4 * 0.5005, 0.01 * 0.5005])
    assert [g["lr"] for g in opt.param_groups] == lrs


def test_apply_lr_schedule_needs_base_lr():
    opt = LARS([_param(2, 2, seed=0)], lr=0.1)
    with pytest.raises(KeyError, match="param_groups"):
        apply_lr_schedule(opt, 0, total_steps=10, warmup_steps=1)


def test_scaled_lr_linear_rule():
    assert scaled_lr(0.2, 2048) == pytest.approx(1.6)        # the paper's weights lr at batch 2048
    assert scaled_lr(0.0048, 256) == pytest.approx(0.0048)
    assert scaled_lr(0.3, 128) == pytest.approx(0.15)
    assert scaled_lr(1.0, 64, reference=128) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        scaled_lr(0.2, 0)
    with pytest.raises(ValueError):
        scaled_lr(-0.2, 256)


def test_scaled_lr_other_rules():
    assert scaled_lr(0.2, 1024, rule="sqrt") == pytest.approx(0.4)      # 0.2 * sqrt(4)
    assert scaled_lr(0.2, 1024, rule="none") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="lr scaling rule 'cubic'"):
        scaled_lr(0.2, 1024, rule="cubic")
