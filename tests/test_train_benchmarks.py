"""The trainer-overhead and training-throughput benchmarks: the hand-written baseline reproduces the Trainer bit for
bit, the paired timing ratio sees a known factor, FLOP counts match closed forms, and quick runs write their reports."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

import sde_diffusion as sd
from sde_diffusion.bench import train_throughput, trainer_overhead


# ----- trainer overhead -----
def test_quick_overhead_run_baseline_reproduces_the_trainer(tmp_path):
    """Both loops do the same work: after the interleaved runs their weights and EMA weights are identical."""
    args = trainer_overhead.build_parser().parse_args(["--quick", "--out", str(tmp_path)])
    report = trainer_overhead.run(args, "test", log=lambda *a: None)
    saved = json.loads((tmp_path / "trainer_overhead.json").read_text())
    assert saved["rows"] == report["rows"] and len(saved["rows"]) == 2
    for row in saved["rows"]:
        assert row["max_weight_gap"] == 0.0 and row["max_ema_gap"] == 0.0, row
        # a loose sanity band: the Trainer is not grossly slower or faster than the same work written out
        assert 0.5 < row["ratio"] < 2.0 and 0.5 < row["progress_ratio"] < 2.5, row
        assert row["met"] == (row["ratio"] <= trainer_overhead.TARGET_RATIO)
    text = (tmp_path / "trainer_overhead.md").read_text()
    assert "| tiny UNet, digits 8×8 |" in text and "| MLP, moons 2-D |" in text


def test_hand_written_loop_departs_when_the_algorithm_differs():
    """The bit-identity above is not vacuous: one step with another learning rate gives other weights."""
    setup = trainer_overhead.Setup(trainer_overhead.cases(quick=True)[1])
    trainer, hand = trainer_overhead.TrainerRun(setup), trainer_overhead.HandWrittenRun(setup)
    hand.cfg.lr *= 2
    trainer.fit(2)
    hand.fit(2)
    assert trainer_overhead.max_gap(trainer.net, hand.net) > 1e-6


def test_paired_ratio_measures_a_factor_of_two():
    runs = {"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.002)}
    times = trainer_overhead.interleaved(runs, 5)
    assert all(len(t) == 5 for t in times.values())
    assert 1.6 < trainer_overhead.paired_ratio(times, "slow", "fast") < 2.6


# ----- FLOP counting: closed forms -----
class _Linear(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(dim, dim) / dim)

    def forward(self, x, t):
        return x @ self.weight


class _Attention(torch.nn.Module):
    """x (b, h·s·d) read as h heads of s tokens of width d; attention of x·w with itself (w a scalar parameter)."""

    def __init__(self, heads, tokens, width):
        super().__init__()
        self.shape, self.w = (heads, tokens, width), torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, t):
        q = (x * self.w).reshape(x.shape[0], *self.shape)
        return F.scaled_dot_product_attention(q, q, q).reshape(x.shape)


def test_flops_of_a_linear_net_are_forward_plus_weight_gradient():
    b, d = 16, 24  # x_t needs no gradient: forward 2·b·d² and the weight's gradient 2·b·d²
    model = sd.ScoreModel(_Linear(d), sd.VPSDE(), prediction="eps")
    assert train_throughput.train_step_flops(model, torch.randn(b, d)) == 4 * b * d * d


def test_flops_of_attention_on_cpu_follow_torch_formula():
    b, h, s, d = 4, 2, 16, 8  # forward QKᵀ and PV: 4·b·h·s²·d; backward (scores recomputed) 10·b·h·s²·d
    model = sd.ScoreModel(_Attention(h, s, d), sd.VPSDE(), prediction="eps")
    assert train_throughput.train_step_flops(model, torch.randn(b, h * s * d)) == 14 * b * h * s * s * d


# ----- throughput -----
def test_peaks_and_file_names():
    assert train_throughput.peak_flops("NVIDIA H200") == {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}
    assert train_throughput.peak_flops("NVIDIA H100 80GB HBM3") == {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}
    assert train_throughput.peak_flops("NVIDIA H100 PCIe")["bf16"] == 756e12
    assert train_throughput.peak_flops("cpu") == {"bf16": None, "tf32": None, "fp32": None}
    assert train_throughput.peak_flops("cpu", fp32=1e12)["fp32"] == 1e12
    assert train_throughput.peak_flops("NVIDIA H200", bf16=1e15)["bf16"] == 1e15
    assert train_throughput.file_stem("NVIDIA H100 80GB HBM3") == "train_throughput_nvidia_h100_80gb_hbm3"
    assert train_throughput.file_stem("cpu") == "train_throughput_cpu"


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch.compile's import
def test_variants_switch_what_they_name():
    cuda = train_throughput.variants(torch.device("cuda"))
    assert cuda[0] == train_throughput.BASELINE and cuda[-1] == train_throughput.TARGET
    assert (cuda[-1].bf16, cuda[-1].compile, cuda[-1].channels_last) == (True, True, True)
    assert [v.precision for v in cuda] == ["fp32", "tf32", "bf16", "bf16", "bf16"]
    assert not any(v.compile for v in train_throughput.variants(torch.device("cpu")))
    torch.manual_seed(0)
    cfg = sd.training.presets.net_config("tiny", (1, 8, 8))
    initial = sd.nets.build(cfg).state_dict()
    data = train_throughput.synthetic_data((1, 8, 8), 64, 0)
    plain, last = (train_throughput.make_trainer(v, cfg, initial, data, 8, "cpu", 0)
                   for v in (train_throughput.BASELINE, train_throughput.Variant("cl", channels_last=True)))
    conv = lambda t: next(p for p in t.net.parameters() if p.dim() == 4 and p.shape[1] > 1)  # noqa: E731
    assert conv(last).is_contiguous(memory_format=torch.channels_last)
    assert not conv(plain).is_contiguous(memory_format=torch.channels_last)
    compiled = train_throughput.make_trainer(train_throughput.Variant("c", compile=True), cfg, initial, data, 8, "cpu", 0)
    assert isinstance(compiled.train_model.net, torch._dynamo.eval_frame.OptimizedModule)  # compiled at the first step
    assert not isinstance(plain.train_model.net, torch._dynamo.eval_frame.OptimizedModule)


def test_state_bytes_count_weights_ema_adam_and_data():
    """Between steps a trainer holds 4 float32 copies of its P weights (net, EMA, AdamW's two moments), AdamW's
    scalar step per weight tensor, both nets' buffers and its data."""
    torch.manual_seed(0)
    cfg = sd.training.presets.net_config("tiny", (1, 8, 8))
    data = train_throughput.synthetic_data((1, 8, 8), 64, 0)
    trainer = train_throughput.make_trainer(train_throughput.BASELINE, cfg, sd.nets.build(cfg).state_dict(), data, 8, "cpu", 0)
    trainer.train_step()
    weights = list(trainer.net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in trainer.net.buffers())
    expected = 4 * 4 * sum(p.numel() for p in weights) + 4 * len(weights) + 2 * buffers + 64 * 64 * 4
    assert train_throughput.state_bytes(trainer) == expected


def test_quick_throughput_run_on_cpu(tmp_path):
    args = train_throughput.build_parser().parse_args(["--quick", "--out", str(tmp_path), "--peak-fp32-tflops", "0.5"])
    report = train_throughput.run(args, "test", log=lambda *a: None)
    saved = json.loads((tmp_path / "train_throughput_cpu.json").read_text())
    assert saved == json.loads(json.dumps(report))
    m, rows = saved["meta"], saved["rows"]
    assert (m["config"], m["shape"], m["device_name"]) == ("tiny", [1, 8, 8], "cpu")
    assert [r["variant"] for r in rows] == ["fp32 eager", "channels_last"]
    assert rows[0]["speedup"] == 1.0
    # recorded: the tiny UNet is 10.32 GFLOP per batch-128 step (FlopCounterMode; convolutions ≈ 9.5); batch 8 is 1/16 of it
    assert m["flops_per_step"] == pytest.approx(10.32e9 * 8 / 128, rel=0.01)
    for r in rows:
        assert r["images_per_s"] > 0 and math.isfinite(r["speedup"])
        assert r["tflop_per_s"] * 1e12 == pytest.approx(r["images_per_s"] / m["batch"] * m["flops_per_step"], rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tflop_per_s"] / 0.5, rel=1e-9)
        assert r["peak_memory_bytes"] is None
    assert "GPU figures are missing" in (tmp_path / "train_throughput_cpu.md").read_text()


@pytest.mark.parametrize("argv, error", [
    (["--device", "tpu"], ValueError), (["--config", "huge"], ValueError), (["--shape", "0", "8", "8"], ValueError),
    (["--threads", "0"], ValueError), (["--peak-fp32-tflops", "-1"], ValueError),
])
def test_throughput_rejects_bad_arguments(argv, error, tmp_path):
    args = train_throughput.build_parser().parse_args(argv + ["--quick", "--out", str(tmp_path)])
    with pytest.raises(error, match=r"--device|--config|--shape|--threads|--peak"):
        train_throughput.run(args, "test", log=lambda *a: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_throughput_names_a_missing_gpu(tmp_path):
    args = train_throughput.build_parser().parse_args(["--device", "cuda", "--quick", "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="no CUDA device"):
        train_throughput.run(args, "test", log=lambda *a: None)
