"""Data parallelism on CPU (gloo, 2 real processes): DDP gradients equal one process's on the concatenated
batch, ranks stay in step, rank 0 alone writes, and sampling under torchrun equals sampling in one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import sde_diffusion as sd
from sde_diffusion.data import Dataset
from sde_diffusion.losses import dsm_loss

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def _net():
    torch.manual_seed(0)
    net = sd.nets.MLP(dim=2, hidden=32, depth=2)
    with torch.no_grad():  # a non-zero output layer, so every parameter gets a gradient
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _batch():
    g = torch.Generator().manual_seed(1)
    x0 = sd.data.toy_sample("moons", 2 * BATCH, g)
    t = 1e-3 + (1 - 1e-3) * torch.rand(2 * BATCH, generator=g, dtype=torch.float64)
    noise = torch.randn(2 * BATCH, 2, generator=g)
    return x0, t, noise


def _grad_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from sde_diffusion.training import distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    env = distributed.Distributed(rank, world, rank, torch.device("cpu"))
    net = _net()
    model = sd.ScoreModel(distributed.wrap(net, env), sd.VPSDE())
    x0, t, noise = _batch()
    part = slice(rank * BATCH, (rank + 1) * BATCH)
    dsm_loss(model, x0[part], "eps", t=t[part], noise=noise[part]).backward()
    torch.save([p.grad for p in net.parameters()], Path(out_dir) / f"grad{rank}.pt")
    dist.destroy_process_group()


def test_ddp_gradients_equal_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_grad_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    net = _net()
    x0, t, noise = _batch()
    dsm_loss(sd.ScoreModel(net, sd.VPSDE()), x0, "eps", t=t, noise=noise).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grad{rank}.pt", weights_only=True)
        for g, p in zip(grads, net.parameters()):
            torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def _torchrun(*args, nproc=2, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "sde_diffusion", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sde_diffusion", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_torchrun_training_and_sharded_sampling(tmp_path):
    run = tmp_path / "run"
    proc = _torchrun("train", "--data", "moons", "--steps", "20", "--batch-size", "64", "--checkpoint-every", "10",
                     "--no-progress", "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == sorted({r["step"] for r in log}), "rank 0 alone writes the log"
    ckpt = sd.training.load_checkpoint(run)
    assert ckpt.step == 20
    assert ckpt.state is None and len(torch.load(ckpt.path / "state.pt", weights_only=True)["rng"]) == 2
    sample_args = ["sample", "--checkpoint", str(run), "--sampler", "ddim", "--steps", "5", "--num-samples", "10", "--batch-size", "3", "--seed", "4"]
    two = _torchrun(*sample_args, "--out", str(tmp_path / "two.npz"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = _cli(*sample_args, "--out", str(tmp_path / "one.npz"))
    assert one.returncode == 0, one.stderr
    import numpy as np

    a, b = np.load(tmp_path / "one.npz")["x"], np.load(tmp_path / "two.npz")["x"]
    assert a.shape == (10, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)


def _trainer_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from sde_diffusion.training import TrainConfig, Trainer, distributed

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    env = distributed.Distributed(rank, world, rank, torch.device("cpu"))
    data = Dataset(x=sd.data.toy_sample("moons", 256, torch.Generator().manual_seed(0)))
    cfg = TrainConfig(steps=5, batch_size=32, warmup=0, progress=False, checkpoint_every=0, sample_n=8, sample_steps=3)
    trainer = Trainer(sd.ScoreModel(_net(), sd.VPSDE()), data, cfg, env=env, out_dir=Path(out_dir) / "run")
    seen = trainer._indices(0, 0)
    trainer.fit()
    torch.save({"params": [p.detach() for p in trainer.net.parameters()], "indices": seen}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_see_disjoint_shards_and_stay_in_step(tmp_path):
    mp.spawn(_trainer_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert len(r0["indices"]) == len(r1["indices"]) == 16
    assert not set(r0["indices"].tolist()) & set(r1["indices"].tolist())
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-0000005"]
