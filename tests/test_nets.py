"""Score networks: the net(x, t, y) contract, embeddings against closed forms and diffusers, the residual and
attention blocks against their equations, config round trips, parameter counts, and a fit that must converge."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sde_diffusion import VPSDE
from sde_diffusion.nets import CONFIGS, MLP, FourierEmbedding, SinusoidalEmbedding, UNet, build, parameter_count
from sde_diffusion.nets.layers import AttentionBlock, ResBlock, group_norm

#: a small UNet with every feature switched on: two levels, attention at 4×4 and in the middle
SMALL_UNET = dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=8,
                  image_size=8, dropout=0.0)


def _perturb(net: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter that initialisation set to exactly zero (output layers, last convs, biases) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def _unet(**kw) -> UNet:
    return UNet(**{**SMALL_UNET, **kw}).eval()


# ----- contract: shapes, zero initialisation, conditioning -----
@pytest.mark.parametrize("channels_in, h, w", [(1, 8, 8), (3, 8, 12), (4, 16, 4), (3, 4, 4)])
def test_unet_output_shape_and_finite(channels_in, h, w):
    torch.manual_seed(0)
    net = _perturb(_unet(in_channels=channels_in))
    x = torch.randn(3, channels_in, h, w)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().mean() > 1e-4
    assert _unet(in_channels=channels_in, out_channels=2)(x, torch.rand(3)).shape == (3, 2, h, w)


def test_unet_rejects_bad_shapes():
    net = _unet(channel_mult=(1, 2, 2), attn_resolutions=(2,))  # three levels: H, W divisible by 4
    net(torch.randn(2, 1, 4, 12), torch.rand(2))
    with pytest.raises(ValueError, match=r"divisible by 4"):
        net(torch.randn(2, 1, 6, 8), torch.rand(2))
    with pytest.raises(ValueError, match=r"divisible by 4"):
        net(torch.randn(2, 1, 8, 10), torch.rand(2))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, H, W\)"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\)"):
        MLP(2)(torch.randn(4, 3), torch.rand(4))


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="groups=32.*channel count 48"):
        UNet(channels=48, groups=32, attn_resolutions=())
    with pytest.raises(ValueError, match=r"attn_resolutions \[16\].*image_size 28"):
        UNet(image_size=28)
    with pytest.raises(ValueError, match="image_size must be divisible by 4"):
        UNet(image_size=30, attn_resolutions=())
    with pytest.raises(ValueError, match="resample"):
        UNet(resample="bilinear")
    with pytest.raises(ValueError, match="time_embedding"):
        MLP(2, time_embedding="learned")
    with pytest.raises(ValueError, match="num_classes"):
        MLP(2, num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.0)
    with pytest.raises(ValueError, match="num_heads=3"):
        UNet(num_heads=3)
    with pytest.raises(ValueError, match="embedding_scale"):
        MLP(2, embedding_scale=-1.0)
    with pytest.raises(TypeError, match="channel_mult"):
        UNet(channel_mult=2)


def test_fresh_nets_output_exactly_zero():
    torch.manual_seed(0)
    for net, x in [(UNet.from_config("tiny", in_channels=3), torch.randn(4, 3, 8, 8)),
                   (_unet(num_classes=5), torch.randn(4, 1, 8, 8)), (MLP(3, num_classes=2), torch.randn(4, 3))]:
        assert torch.equal(net(x, torch.rand(4)), torch.zeros_like(x))


@pytest.mark.parametrize("make, shape", [(lambda: MLP(2), (6, 2)), (lambda: _unet(), (6, 1, 8, 8)),
                                         (lambda: _unet(time_embedding="fourier"), (6, 1, 8, 8))])
def test_time_conditioning_matters(make, shape):
    torch.manual_seed(1)
    net = make().eval()
    with torch.no_grad():  # MLP: only the output layer is zero; UNet: every zero-initialised layer
        for p in (net.output.parameters() if isinstance(net, MLP) else net.parameters()):
            if not p.any():
                p.normal_(std=0.05)
    x = torch.randn(shape)
    t1, t2 = torch.full((6,), 0.1), torch.full((6,), 0.7)
    out1, out2 = net(x, t1), net(x, t2)
    assert torch.equal(out1, net(x, t1.clone()))  # deterministic in eval mode
    assert (out1 - out2).abs().mean() > 1e-3 * out1.abs().mean()
    assert torch.equal(net(x, torch.tensor(0.7)), out2)  # a scalar t is broadcast


@pytest.mark.parametrize("make, shape", [(lambda: MLP(2, num_classes=3), (4, 2)),
                                         (lambda: _unet(num_classes=3), (4, 1, 8, 8))])
def test_labels(make, shape):
    torch.manual_seed(2)
    net = _perturb(make())
    x, t = torch.randn(shape), torch.rand(4)
    null = torch.full((4,), 3)
    assert torch.equal(net(x, t), net(x, t, null))  # y=None is the null label
    a, b = net(x, t, torch.tensor([0, 1, 2, 0])), net(x, t, torch.tensor([1, 2, 0, 0]))
    assert ((a - b).flatten(1).abs().amax(1) > 1e-4).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 3\]"):
        net(x, t, torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match=r"y must hold labels"):
        net(x, t, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        net(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
        net(x, t, torch.zeros(5, dtype=torch.long))
    unconditional = MLP(2) if isinstance(net, MLP) else _unet()
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, null)


# ----- embeddings -----
@pytest.mark.parametrize("scale", [1000.0, 1.0])
def test_sinusoidal_closed_form(scale):
    dim = 8
    t = [0.0, 0.25, 1.0, 7.0]
    emb = SinusoidalEmbedding(dim, scale=scale)(torch.tensor(t))
    for i, ti in enumerate(t):
        for k in range(dim // 2):
            arg = scale * ti * math.exp(-math.log(10000.0) * k / (dim // 2))
            assert emb[i, k].item() == pytest.approx(math.sin(arg), abs=2e-4)
            assert emb[i, k + dim // 2].item() == pytest.approx(math.cos(arg), abs=2e-4)


def test_sinusoidal_matches_diffusers():
    from diffusers.models.embeddings import get_timestep_embedding

    steps = torch.tensor([0.0, 1.0, 17.0, 500.0, 999.0])
    ours = SinusoidalEmbedding(64, scale=1.0, max_period=10000.0)(steps)
    theirs = get_timestep_embedding(steps, 64, flip_sin_to_cos=False, downscale_freq_shift=0, scale=1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # float32 rounding of args up to 999
    ours = SinusoidalEmbedding(64)(steps / 1000)  # scale 1000 on t ∈ [0, 1] is DDPM's step index
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)


def test_fourier_features_and_frequencies():
    emb = FourierEmbedding(4096, scale=16.0)
    W = emb.W
    assert "W" in emb.state_dict()
    assert abs(W.std().item() / 16.0 - 1) < 0.05 and abs(W.mean().item()) < 16.0 * 0.1  # N(0, 16²), 2048 draws
    assert torch.equal(W, FourierEmbedding(4096, scale=16.0).W)  # deterministic
    t = torch.tensor([0.0, 0.3, -1.2])
    small = FourierEmbedding(6, scale=2.0)
    expected = torch.cat([torch.sin(2 * math.pi * t[:, None] * small.W), torch.cos(2 * math.pi * t[:, None] * small.W)], 1)
    torch.testing.assert_close(small(t), expected)
    assert torch.equal(FourierEmbedding(6, scale=4.0).W, 2 * small.W)  # same draws, scaled
    with pytest.raises(ValueError, match="dim must be even"):
        FourierEmbedding(5)


@pytest.mark.parametrize("make, shape", [
    (lambda: MLP(3, hidden=32, depth=2, num_classes=4, embedding_scale=3.0), (5, 3)),
    (lambda: _unet(in_channels=3, num_classes=4, time_embedding="fourier", resample="conv", num_heads=2), (5, 3, 8, 8)),
    (lambda: UNet.from_config("tiny", in_channels=2, dropout=0.0), (5, 2, 8, 8)),
])
def test_build_from_config_reproduces_the_net(make, shape):
    torch.manual_seed(3)
    net = _perturb(make().eval())
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith(".W"):
                buf.mul_(1.5)  # a checkpoint must restore the stored frequencies, not re-draw them
    config = json.loads(json.dumps(net.config))
    assert config == net.config and config["type"] == type(net).__name__
    twin = build(config).eval()
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    twin.load_state_dict(net.state_dict())
    x, t, y = torch.randn(shape), torch.rand(5), torch.tensor([0, 1, 2, 3, 4])
    kwargs = {"y": y} if getattr(net, "num_classes", None) else {}
    assert torch.equal(twin(x, t, **kwargs), net(x, t, **kwargs))
    # two fresh builds of one config are identical before training (Fourier W included)
    assert all(torch.equal(a, b) for a, b in zip(build(config).buffers(), build(config).buffers()))


def test_build_rejects_bad_configs():
    with pytest.raises(ValueError, match="type"):
        build({"type": "Transformer"})
    with pytest.raises(ValueError, match=r"unknown MLP argument\(s\) \['width'\]"):
        build({"type": "MLP", "dim": 2, "width": 3})
    with pytest.raises(ValueError, match="name must be one of"):
        UNet.from_config("huge")
    with pytest.raises(ValueError, match=r"unknown UNet argument\(s\) \['chanels'\]"):
        UNet.from_config("tiny", chanels=8)


# ----- blocks against their equations -----
def _affine_group_norm(norm, x):
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


@pytest.mark.parametrize("skip_rescale", [True, False])
@pytest.mark.parametrize("c_in, c_out", [(8, 8), (8, 16)])
def test_res_block_closed_form(skip_rescale, c_in, c_out):
    torch.manual_seed(4)
    block = _perturb(ResBlock(c_in, c_out, cond_dim=12, skip_rescale=skip_rescale, groups=4))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, cond = torch.randn(2, c_in, 6, 4), torch.randn(2, 12)
    h = F.conv2d(F.silu(_affine_group_norm(block.norm1, x)), block.conv1.weight, block.conv1.bias, padding=1)
    mod = cond @ block.modulation.weight.T + block.modulation.bias
    scale, shift = mod[:, :c_out, None, None], mod[:, c_out:, None, None]
    h = _affine_group_norm(block.norm2, h) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    skip = x if c_in == c_out else F.conv2d(x, block.skip.weight, block.skip.bias)
    expected = (skip + h) / (math.sqrt(2) if skip_rescale else 1.0)
    torch.testing.assert_close(block(x, cond), expected, atol=1e-5, rtol=1e-5)


def test_fresh_res_block_is_the_rescaled_identity():
    x, cond = torch.randn(2, 8, 4, 4), torch.randn(2, 32)
    torch.testing.assert_close(ResBlock(8, 8, 32, skip_rescale=True, groups=4)(x, cond), x / math.sqrt(2))
    torch.testing.assert_close(ResBlock(8, 8, 32, skip_rescale=False, groups=4)(x, cond), x)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_block_closed_form(num_heads):
    torch.manual_seed(5)
    block = _perturb(AttentionBlock(8, num_heads=num_heads, groups=4), std=0.3)
    x = torch.randn(3, 8, 2, 3)
    h = _affine_group_norm(block.norm, x).flatten(2).transpose(1, 2)  # (B, HW, C)
    q, k, v = (h @ block.qkv.weight.T + block.qkv.bias).chunk(3, dim=-1)
    d = 8 // num_heads
    heads = []
    for j in range(num_heads):
        qj, kj, vj = (z[..., j * d:(j + 1) * d] for z in (q, k, v))
        heads.append(torch.softmax(qj @ kj.transpose(1, 2) / math.sqrt(d), dim=-1) @ vj)
    out = (torch.cat(heads, -1) @ block.proj.weight.T + block.proj.bias).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), (x + out) / math.sqrt(2), atol=1e-5, rtol=1e-5)


def test_group_norm_groups():
    assert group_norm(8, 32).num_groups == 8
    assert group_norm(96, 32).num_groups == 32
    with pytest.raises(ValueError, match="groups=32"):
        group_norm(40, 32)


# ----- memory format and compilation -----
def test_channels_last_matches_contiguous():
    torch.manual_seed(6)
    net = _perturb(_unet(in_channels=3, resample="conv"))
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    ref = net(x, t)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), t), ref, atol=1e-5, rtol=1e-5)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), t), ref, atol=1e-5, rtol=1e-5)


def test_forward_compiles_without_graph_breaks():
    """fullgraph=True fails on any data-dependent Python branch or .item() in forward."""
    torch.manual_seed(7)
    net = _perturb(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4, image_size=4,
                        num_classes=3).eval())
    x, t, y = torch.randn(2, 1, 4, 4), torch.rand(2), torch.tensor([1, 3])
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t, y), net(x, t, y))


# ----- sizes -----
def test_parameter_counts_of_named_configs():
    """The counts documented in nets/configs.py; ddpmpp at 32×32×3 (score_sde's DDPM++ cont.: ~62 M)."""
    assert parameter_count(UNet.from_config("tiny")) == 692_065
    assert parameter_count(UNet.from_config("small")) == 1_589_313
    with torch.device("meta"):
        assert parameter_count(UNet.from_config("ddpmpp", in_channels=3)) == 62_032_515
    assert parameter_count(MLP(2)) == 412_546
    fourier = MLP(2, hidden=8, depth=1)
    assert parameter_count(fourier) == sum(p.numel() for p in fourier.parameters())  # the W buffer is not counted
    assert set(CONFIGS) == {"tiny", "small", "ddpmpp"}


@settings(max_examples=15, deadline=None)
@given(channels=st.sampled_from([4, 8, 12]), mult=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       blocks=st.integers(1, 2))
def test_parameter_count_formula_for_the_conv_layout(channels, mult, blocks):
    """The convolutions' weights follow from the layout: input, 2 per res block (+1×1 skips), resamples, output."""
    net = UNet(in_channels=1, channels=channels, channel_mult=mult, num_res_blocks=blocks, attn_resolutions=(),
               groups=4, image_size=2 ** (len(mult) - 1), resample="conv")
    widths = [channels * m for m in mult]
    skips, ch, expected = [channels], channels, 9 * channels  # input conv 1 → channels

    def res(cin, cout):
        return 9 * cin * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)

    for level, wl in enumerate(widths):
        for _ in range(blocks):
            expected += res(ch, wl)
            ch = wl
            skips.append(ch)
        if level != len(widths) - 1:
            expected += 9 * ch * ch
            skips.append(ch)
    expected += 2 * res(ch, ch)
    for level in reversed(range(len(widths))):
        for _ in range(blocks + 1):
            expected += res(ch + skips.pop(), widths[level])
            ch = widths[level]
        if level:
            expected += 9 * ch * ch
    expected += 9 * ch  # output conv → 1 channel
    conv_weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_weights == expected


# ----- learning -----
def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(8)
    net = UNet.from_config("tiny", in_channels=1, dropout=0.0)
    x, t, target = torch.randn(16, 1, 8, 8), torch.rand(16), torch.randn(16, 1, 8, 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(target.pow(2).mean().item())  # a fresh net predicts 0
    assert losses[-1] < losses[0] / 10


def test_mlp_learns_the_exact_eps_of_a_gaussian():
    """Data N(0, diag(4, 1/4)) under VP: the optimal ε(x, t) = σ (α² Σ + σ² I)⁻¹ x; DSM must approach it."""
    torch.manual_seed(9)
    sde, var = VPSDE(), torch.tensor([4.0, 0.25])
    net = MLP(2, hidden=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(400):
        x0 = torch.randn(512, 2) * var.sqrt()
        t = torch.rand(512) * (1 - 0.05) + 0.05
        eps = torch.randn(512, 2)
        alpha, sigma = sde.alpha(t).float()[:, None], sde.sigma(t).float()[:, None]
        loss = (net(alpha * x0 + sigma * eps, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = torch.rand(2000) * 0.9 + 0.1
    alpha, sigma = sde.alpha(t).float()[:, None], sde.sigma(t).float()[:, None]
    x = alpha * torch.randn(2000, 2) * var.sqrt() + sigma * torch.randn(2000, 2)
    exact = sigma * x / (alpha**2 * var + sigma**2)
    with torch.no_grad():
        err = (net(x, t) - exact).pow(2).mean() / exact.pow(2).mean()
    assert err < 0.05


# ----- the benchmark's machinery (its figures are in benchmarks/results/unet.md, not asserted here) -----
def test_unet_benchmark_writes_its_report(tmp_path):
    import argparse

    from sde_diffusion.bench import unet as bench

    args = bench.add_arguments(argparse.ArgumentParser()).parse_args(["--quick", "--threads", "1", "--out", str(tmp_path)])
    report = bench.run(args, "test", log=lambda *a: None)
    saved = json.loads((tmp_path / "unet.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = saved["rows"]
    assert [(r["size"], r["ours_params"]) for r in rows] == [
        ("8×8×1", 692_065), ("8×8×1", parameter_count(UNet.from_config("tiny", resample="conv"))),
        ("28×28×1", 1_589_313), ("28×28×1", parameter_count(UNet.from_config("small", resample="conv")))]
    assert all(r["diffusers_params"] == parameter_count(bench.diffusers_unet(c)) for r, c in
               zip(rows, [bench.CASES[0]] * 2 + [bench.CASES[1]] * 2))
    assert all(r["ours_images_per_s"] > 0 and r["diffusers_images_per_s"] > 0 and r["speedup"] > 0 for r in rows)
    assert "| 8×8×1 |" in (tmp_path / "unet.md").read_text()
