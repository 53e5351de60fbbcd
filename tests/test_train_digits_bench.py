"""`sde-diffusion bench train` end to end on a barely trained checkpoint (slow: six samplers on 200 samples)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.bench import train_digits


@pytest.mark.slow
def test_bench_train_reports_every_sampler_and_the_real_floor(tmp_path):
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.UNet.from_config("tiny", in_channels=1), sd.VPSDE())
    cfg = sd.training.TrainConfig(steps=2, batch_size=32, progress=False, checkpoint_every=0, sample_n=4, sample_steps=2)
    sd.training.Trainer(model, sd.data.load("digits"), cfg, out_dir=tmp_path / "run", data_name="digits").fit()
    args = argparse.Namespace(quick=True, checkpoint=str(tmp_path / "run"), run_dir=None, n=200, out=str(tmp_path / "out"))
    result = train_digits.run(args, "test", log=lambda *a: None)
    report = json.loads((tmp_path / "out" / "train_digits.json").read_text())
    assert set(report["rows"]) == {"real held-out digits", *(label for label, _, _ in train_digits.SAMPLERS)}
    assert report["meta"]["machine"] and result["step"] == 2
    real, untrained = report["rows"]["real held-out digits"], report["rows"]["DDIM (50 steps)"]
    assert real["fd_ratio"] < 2.0 and untrained["fd_ratio"] > 2.0  # two training steps do not make digits
    assert (tmp_path / "out" / "train_digits.png").stat().st_size > 0
