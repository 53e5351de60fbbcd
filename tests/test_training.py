"""The training layer against independent references: a hand-written AdamW/EMA loop, closed-form EMA,
exact resume (in-process and after a real SIGKILL), refusal of pickled code, the NaN stop, configs."""
from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.data import Dataset
from sde_diffusion.losses import dsm_loss
from sde_diffusion.training import (EMA, CheckpointError, NonFiniteLossError, RunConfig, TrainConfig, Trainer, build_sde,
                                    checkpoints, load_checkpoint, read_config_file, sde_spec)

REPO = Path(__file__).resolve().parents[1]


def toy_data(n=512, seed=0) -> Dataset:
    return Dataset(x=sd.data.toy_sample("moons", n, torch.Generator().manual_seed(seed)))


def small_model(seed=0) -> sd.ScoreModel:
    torch.manual_seed(seed)
    return sd.ScoreModel(sd.nets.MLP(dim=2, hidden=32, depth=2), sd.VPSDE(), prediction="eps")


def quick_config(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=32, lr=1e-2, warmup=3, ema_decay=0.9, log_every=2, checkpoint_every=0,
                progress=False, sample_n=16, sample_steps=4)
    base.update(kw)
    return TrainConfig(**base)


def params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# ----- EMA -----
def test_ema_matches_closed_form_and_ramp():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9)
    start = params(ema.net).clone()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    betas = []
    for _ in range(100):
        betas.append(ema.rate())
        ema.update(net)
    # the ramp min(decay, (1+n)/(10+n)): 0.1, 2/11, …, then the decay itself
    assert betas[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert betas[-1] == pytest.approx(0.9)
    expected = 1.0 + math.prod(betas) * (start - 1.0)  # θ_ema − θ shrinks by β at each update
    torch.testing.assert_close(params(ema.net), expected, rtol=0, atol=1e-6)


# ----- the loop against a hand-written one -----
def hand_written_training(model, data, cfg, steps):
    """The algorithm of the Trainer's docstring, written out plainly (one process, no accumulation)."""
    torch.manual_seed(cfg.seed)
    net = model.net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas)
    ema = [p.detach().clone() for p in net.parameters()]
    gen = torch.Generator().manual_seed(cfg.seed * 1000)
    n, per_epoch = len(data.x), len(data.x) // cfg.batch_size
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = dsm_loss(model, data.x[idx], cfg.weighting, t_sampling=cfg.t_sampling, generator=gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        beta = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, net.parameters()):
                e.mul_(beta).add_(p.detach(), alpha=1 - beta)
    return params(net), torch.cat([e.flatten() for e in ema])


def test_trainer_equals_hand_written_loop():
    data, cfg = toy_data(), quick_config(steps=20, grad_clip=0.5)  # 20 steps cross an epoch boundary (16 per epoch)
    trainer = Trainer(small_model(), data, cfg)
    trainer.fit()
    ref_net, ref_ema = hand_written_training(small_model(), data, cfg, cfg.steps)
    torch.testing.assert_close(params(trainer.net), ref_net, rtol=0, atol=0)
    torch.testing.assert_close(params(trainer.ema.net), ref_ema, rtol=1e-6, atol=1e-7)


def test_training_lowers_the_loss_on_moons():
    data = toy_data(4096)
    cfg = quick_config(steps=300, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.99, t_sampling="uniform")
    model = small_model()
    eval_gen = lambda: torch.Generator().manual_seed(123)
    with torch.no_grad():
        before = dsm_loss(model, data.x[:2048], generator=eval_gen()).item()
    trainer = Trainer(model, data, cfg)
    trainer.fit()
    with torch.no_grad():
        after = dsm_loss(trainer.ema_model(), data.x[:2048], generator=eval_gen()).item()
    assert after < 0.75 * before, (before, after)


def test_gradient_accumulation_averages_micro_batches():
    data, cfg = toy_data(), quick_config(steps=1, batch_size=32, accumulate=2, grad_clip=0.0, warmup=0)
    trainer = Trainer(small_model(), data, cfg)
    state = trainer.loss_generator.get_state()
    x_a, _ = trainer._batch(0, 0)
    x_b, _ = trainer._batch(0, 1)
    assert x_a.shape[0] == 16 and not torch.equal(x_a, x_b)
    ref = small_model()
    gen = torch.Generator()
    gen.set_state(state)
    loss = 0.5 * (dsm_loss(ref, x_a, cfg.weighting, t_sampling=cfg.t_sampling, generator=gen)
                  + dsm_loss(ref, x_b, cfg.weighting, t_sampling=cfg.t_sampling, generator=gen))
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in ref.net.parameters()])
    trainer.train_step()
    # AdamW's first step moves each weight by lr·g/(|g| + eps'): compare gradients through the optimizer state
    got = torch.cat([trainer.optimizer.state[p]["exp_avg"].flatten() for p in trainer.net.parameters()]) / (1 - 0.9)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


# ----- checkpoints and exact resume -----
def test_resume_in_process_is_bit_identical(tmp_path):
    data = toy_data()
    full = Trainer(small_model(), data, quick_config(steps=12))
    full.fit()
    first = Trainer(small_model(), data, quick_config(steps=6), out_dir=tmp_path / "run")
    first.fit()
    second = Trainer(small_model(seed=99), data, quick_config(steps=12), out_dir=tmp_path / "run", resume=True)
    assert second.step == 6
    second.fit()
    assert torch.equal(params(full.net), params(second.net))
    assert torch.equal(params(full.ema.net), params(second.ema.net))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, 10, 12]


def test_checkpoints_keep_the_newest_and_reload(tmp_path):
    data = toy_data()
    trainer = Trainer(small_model(), data, quick_config(steps=8, checkpoint_every=2, keep=2), out_dir=tmp_path)
    trainer.fit()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-0000006", "checkpoint-0000008"]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 8 and ckpt.config.train.steps == 8
    assert torch.equal(params(ckpt.model.net), params(trainer.ema.net))
    raw = load_checkpoint(tmp_path / "checkpoint-0000006", weights="model")
    assert raw.step == 6
    x = torch.randn(5, 2)
    t = torch.full((5,), 0.3)
    torch.testing.assert_close(ckpt.model.eps(x, t), trainer.ema_model().eps(x, t))
    assert (tmp_path / "samples" / "step_0000008.png").stat().st_size > 0
    assert not list(tmp_path.glob(".tmp-*"))


class _Payload:
    """A pickle that, if ever unpickled, creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("victim", ["state.pt", "model.safetensors", "ema.safetensors"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, victim):
    Trainer(small_model(), toy_data(), quick_config(steps=2), out_dir=tmp_path).fit()
    folder = checkpoints(tmp_path)[-1]
    marker = tmp_path / "pwned"
    with open(folder / victim, "wb") as fh:
        pickle.dump({"step": 1, "x": _Payload(marker)}, fh)
    with pytest.raises(CheckpointError, match=f"refusing to load .*{victim}"):
        load_checkpoint(tmp_path, weights="model", training_state=True)
    assert not marker.exists()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "sde_diffusion", "sample", "--checkpoint", str(tmp_path), "--n", "4",
                           "--steps", "2", "--out", str(tmp_path / "x.npz")] + (["--weights", "model"] if victim == "model.safetensors" else []),
                          capture_output=True, text=True, env=env, timeout=120)
    if victim == "state.pt":  # sampling does not read the training state
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sde-diffusion: error: refusing to load"), proc.stderr
    assert not marker.exists()


class _NaNAfter(torch.nn.Module):
    def __init__(self, net, calls):
        super().__init__()
        self.inner, self.calls, self.config = net, calls, net.config

    def forward(self, x, t, **kw):
        self.calls -= 1
        out = self.inner(x, t, **kw)
        return out * float("nan") if self.calls < 0 else out


def test_nan_stops_training_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    net = _NaNAfter(sd.nets.MLP(dim=2, hidden=16, depth=1), calls=5)
    model = sd.ScoreModel(net, sd.VPSDE())
    trainer = Trainer(model, toy_data(), quick_config(steps=10, checkpoint_every=2), out_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="step 6"):
        trainer.fit()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-0000002", "checkpoint-0000004"]
    state = torch.load(checkpoints(tmp_path)[-1] / "state.pt", weights_only=True)
    assert state["step"] == 4
    from safetensors.torch import load_file

    weights = load_file(str(checkpoints(tmp_path)[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def cli(*args, timeout=300, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sde_diffusion", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """A real process is SIGKILLed after its step-N checkpoint; resuming it gives the 2N-step weights exactly."""
    common = ["train", "--data", "moons", "--steps", "60", "--batch-size", "64", "--seed", "3", "--no-progress"]
    straight = cli(*common, "--checkpoint-every", "0", "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen([sys.executable, "-m", "sde_diffusion", *common, "--steps", "100000", "--checkpoint-every", "30",
                               "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoint-0000030").exists():
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    resumed = cli(*common, "--resume", "--out", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "straight", weights="model")
    b = load_checkpoint(tmp_path / "killed", weights="model")
    assert a.step == b.step == 60
    for key in a.net_state:
        assert torch.equal(a.net_state[key], b.net_state[key]), key
        assert torch.equal(a.ema_state[key], b.ema_state[key]), key


# ----- configs -----
@pytest.mark.parametrize("sde", [sd.VPSDE(0.2, 15.0), sd.SubVPSDE(), sd.VESDE(0.02, 30.0), sd.CosineVPSDE(), sd.DiscreteVPSDE.cosine(50)])
def test_sde_spec_round_trip(sde):
    spec = json.loads(json.dumps(sde_spec(sde)))
    again = build_sde(spec)
    t = torch.linspace(0.05, sde.T, 7, dtype=torch.float64)
    torch.testing.assert_close(again.alpha(t), sde.alpha(t))
    torch.testing.assert_close(again.sigma(t), sde.sigma(t))


def test_sde_from_functions_cannot_be_checkpointed():
    sde = sd.LinearSDE.from_coefficients(lambda t: -0.5 * t, lambda t: 1 + 0 * t)
    with pytest.raises(ValueError, match="cannot be saved"):
        sde_spec(sde)


def test_config_files(tmp_path):
    (tmp_path / "run.toml").write_text('data = "moons"\n[train]\nsteps = 7\nlr = 0.01\n[model]\nnet = "mlp"\n')
    d = read_config_file(tmp_path / "run.toml")
    assert d["train"] == {"steps": 7, "lr": 0.01}
    cfg = RunConfig.from_dict({"data": "moons", "train": d["train"]})
    assert cfg.train.steps == 7 and RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys.*stpes"):
        RunConfig.from_dict({"train": {"stpes": 3}})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="divisible by accumulate"):
        TrainConfig(batch_size=10, accumulate=3)
