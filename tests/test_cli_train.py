"""``sde-diffusion train`` / ``sample`` end to end in-process: outputs, per-data-set defaults and config precedence,
conditional runs, and one-line errors for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.cli import main


def train(tmp_path, *extra, name="run"):
    out = tmp_path / name
    code = main(["train", "--data", "moons", "--steps", "4", "--batch-size", "32", "--checkpoint-every", "0",
                 "--no-progress", "--out", str(out), *extra])
    assert code == 0
    return out


def test_train_then_sample_npz_and_png(tmp_path, capsys):
    run = train(tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == "moons" and cfg["model"]["net"]["type"] == "MLP" and cfg["train"]["steps"] == 4
    assert main(["sample", "--checkpoint", str(run), "--sampler", "unipc", "--steps", "3", "--option", "order=2",
                 "--n", "7", "--out", str(tmp_path / "s.npz")]) == 0
    x = np.load(tmp_path / "s.npz")["x"]
    assert x.shape == (7, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    # the same seed gives the same samples; the EMA weights are used unless asked
    ckpt = sd.training.load_checkpoint(run)
    expected = sd.sample.draw_samples(ckpt.model, sd.samplers.UniPC(steps=3, order=2), 7, (2,), seed=0)
    np.testing.assert_array_equal(x, expected.numpy())
    assert main(["sample", "--checkpoint", str(run), "--steps", "3", "--n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_run_writes_unit_range_samples(tmp_path):
    images = (np.random.default_rng(0).random((40, 1, 8, 8)) * 255).astype(np.uint8)
    np.save(tmp_path / "imgs.npy", images)
    out = tmp_path / "img"
    assert main(["train", "--data", str(tmp_path / "imgs.npy"), "--steps", "2", "--batch-size", "8", "--no-progress",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["net"]["type"] == "UNet" and cfg["model"]["data_shape"] == [1, 8, 8]
    assert main(["sample", "--checkpoint", str(out), "--sampler", "ddim", "--steps", "2", "--n", "3", "--out", str(tmp_path / "x.npz")]) == 0
    x = np.load(tmp_path / "x.npz")["x"]
    assert x.shape == (3, 1, 8, 8) and x.min() >= 0 and x.max() <= 1


def test_config_file_and_flag_precedence(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\nnet = "mlp"\nnet_options = {hidden = 16, depth = 1}\nsde = "subvp"\n'
                                     '[train]\nlr = 0.005\nsteps = 3\nema_decay = 0.5\n')
    run = train(tmp_path, "--config", str(tmp_path / "c.toml"), "--lr", "0.001")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["sde"]["name"] == "subvp" and cfg["model"]["net"]["hidden"] == 16
    assert cfg["train"]["lr"] == 0.001 and cfg["train"]["ema_decay"] == 0.5  # flag beats file; file beats preset
    assert cfg["train"]["steps"] == 4  # the flag of train()
    assert cfg["train"]["batch_size"] == 32


def test_conditional_run_and_labels(tmp_path):
    x = torch.randn(60, 3)
    y = torch.arange(60) % 3
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    out = tmp_path / "cond"
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--conditional", "--steps", "3", "--batch-size", "12",
                 "--no-progress", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["num_classes"] == 3 and cfg["model"]["net"]["num_classes"] == 3
    assert main(["sample", "--checkpoint", str(out), "--steps", "2", "--n", "4", "--label", "2", "--out", str(tmp_path / "c.npz")]) == 0
    assert main(["sample", "--checkpoint", str(out), "--steps", "2", "--n", "4", "--label", "3", "--out", str(tmp_path / "c.npz")]) == 2
    # classifier-free guidance from the command line equals the wrapper's samples
    assert main(["sample", "--checkpoint", str(out), "--sampler", "ddim", "--steps", "3", "--n", "4", "--class", "1",
                 "--guidance-scale", "2.5", "--out", str(tmp_path / "g.npz")]) == 0
    ckpt = sd.training.load_checkpoint(out)
    guided = sd.guidance.ClassifierFreeGuidance(ckpt.model, 2.5, null_label=3)
    expected = sd.sample.draw_samples(guided, sd.samplers.DDIM(steps=3), 4, (3,), seed=0, labels=torch.full((4,), 1))
    np.testing.assert_array_equal(np.load(tmp_path / "g.npz")["x"], expected.numpy())
    plain = sd.sample.draw_samples(ckpt.model, sd.samplers.DDIM(steps=3), 4, (3,), seed=0, labels=torch.full((4,), 1))
    assert not torch.equal(plain, expected)


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/no/such/file.npy", "--out", "{tmp}/r"], "no/such/file.npy"),
    (["train", "--data", "moons", "--net", "tiny", "--out", "{tmp}/r"], "use --net mlp"),
    (["train", "--data", "moons", "--steps", "0", "--out", "{tmp}/r"], "steps must be a positive integer"),
    (["train", "--data", "moons", "--conditional", "--out", "{tmp}/r"], "needs labelled data"),
    (["sample", "--checkpoint", "{tmp}/nothing", "--out", "{tmp}/x.npz"], "does not exist"),
    (["sample", "--checkpoint", "{tmp}", "--out", "{tmp}/x.npz"], "no checkpoint in"),
    (["sample", "--checkpoint", "{run}", "--sampler", "nope", "--out", "{tmp}/x.npz"], "sampler must be one of"),
    (["sample", "--checkpoint", "{run}", "--option", "order", "--out", "{tmp}/x.npz"], "KEY=VALUE"),
    (["sample", "--checkpoint", "{run}", "--option", "colour=3", "--out", "{tmp}/x.npz"], "no option"),
    (["sample", "--checkpoint", "{run}", "--out", "{tmp}/x.jpg"], "must end in .npz or .png"),
    (["sample", "--checkpoint", "{run}", "--guidance-scale", "2", "--out", "{tmp}/x.npz"], "class-conditional checkpoint"),
])
def test_errors_are_one_line(tmp_path, capsys, args, message):
    run = train(tmp_path)
    capsys.readouterr()
    code = main([a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("sde-diffusion: error:") and message in err[0], err


def test_existing_run_needs_resume(tmp_path, capsys):
    run = train(tmp_path)
    capsys.readouterr()
    assert main(["train", "--data", "moons", "--steps", "6", "--no-progress", "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--steps", "6", "--no-progress", "--resume", "--out", str(run)]) == 0  # data and settings from the checkpoint
    assert sd.training.load_checkpoint(run).step == 6


def test_sample_inpaints_known_coordinates(tmp_path):
    run = train(tmp_path)
    np.save(tmp_path / "mask.npy", np.array([True, False]))
    np.save(tmp_path / "obs.npy", np.array([0.5, 0.0], dtype=np.float32))
    assert main(["sample", "--checkpoint", str(run), "--sampler", "reverse_diffusion", "--steps", "5", "--n", "6",
                 "--inpaint-mask", str(tmp_path / "mask.npy"), "--observed", str(tmp_path / "obs.npy"),
                 "--resample", "1", "--out", str(tmp_path / "inp.npz")]) == 0
    x = np.load(tmp_path / "inp.npz")["x"]
    assert np.all(x[:, 0] == 0.5) and np.unique(x[:, 1]).size == 6
    assert main(["sample", "--checkpoint", str(run), "--inpaint-mask", str(tmp_path / "mask.npy"),
                 "--out", str(tmp_path / "inp.npz")]) == 2
    args = ["sample", "--checkpoint", str(run), "--sampler", "reverse_diffusion", "--steps", "4", "--n", "6", "--seed", "3",
            "--inpaint-mask", str(tmp_path / "mask.npy"), "--observed", str(tmp_path / "obs.npy"), "--resample", "1",
            "--no-progress"]
    assert main([*args, "--jump-length", "2", "--out", str(tmp_path / "j2.npz")]) == 0
    assert main([*args, "--out", str(tmp_path / "j1.npz")]) == 0
    j1, j2 = (np.load(tmp_path / f"{name}.npz")["x"] for name in ("j1", "j2"))
    assert np.all(j2[:, 0] == 0.5) and not np.allclose(j1[:, 1], j2[:, 1])  # the flag reaches the sampler
    assert main([*args, "--jump-length", "0", "--out", str(tmp_path / "j0.npz")]) == 2


def test_likelihood_command_on_vectors_and_images(tmp_path, capsys):
    run = train(tmp_path)
    capsys.readouterr()
    assert main(["likelihood", "--checkpoint", str(run), "--n", "6", "--batch-size", "3", "--rtol", "1e-3", "--atol", "1e-3",
                 "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert "nats per sample" in line and "over 6 samples of moons" in line
    mean = float(line.split()[0])
    ckpt = sd.training.load_checkpoint(run)
    x = sd.data.load("moons").x[:6]
    ref = sd.log_likelihood(ckpt.model, x, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(0)).logp
    assert mean == pytest.approx(float(ref.mean()), abs=1e-3)
    images = (np.random.default_rng(0).random((10, 1, 4, 4)) * 255).astype(np.uint8)
    np.save(tmp_path / "imgs.npy", images)
    out = tmp_path / "img"
    assert main(["train", "--data", str(tmp_path / "imgs.npy"), "--net", "tiny", "--steps", "2", "--batch-size", "5",
                 "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["likelihood", "--checkpoint", str(out), "--n", "2", "--rtol", "1e-2", "--atol", "1e-2", "--hutchinson",
                 "--no-progress"]) == 0
    assert "bits/dim" in capsys.readouterr().out
