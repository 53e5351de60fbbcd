"""``sde-diffusion train`` and ``sde-diffusion sample``: argument parsers and what they run.

Both work under ``torchrun`` (several processes: DDP training; sampling sharded over ranks, rank 0 writes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

from .training.config import SDES

DATA_CHOICES = "digits, mnist, moons, swiss_roll, eight_gaussians, checkerboard, or a PATH (.npy/.npz/image folder)"
WEIGHTINGS = ("eps", "score", "likelihood", "edm", "v")
PREDICTIONS = ("eps", "score", "x0", "v", "edm")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help=f"training data: {DATA_CHOICES}")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl, samples/")
    p.add_argument("--sde", choices=sorted(SDES),
                   help="forward SDE (default per data set: vp); learned: VDM's learnable log-SNR schedule, trained with "
                        "the net by the ELBO (end points) and the ELBO estimator's variance (interior); it needs and "
                        "sets --weighting likelihood")
    p.add_argument("--net", help="network: tiny | small | ddpmpp (UNets for images) | mlp (vectors); default per data set")
    p.add_argument("--prediction", choices=PREDICTIONS, help="what the network predicts (default eps)")
    p.add_argument("--weighting", choices=WEIGHTINGS, help="DSM loss weighting (default eps)")
    p.add_argument("--t-sampling", choices=("uniform", "stratified"), help="training times (default stratified)")
    p.add_argument("--steps", type=int, help="optimizer steps (total, also when resuming)")
    p.add_argument("--batch-size", type=int, help="batch size per step, over all processes")
    p.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    p.add_argument("--ema-decay", type=float, help="EMA decay of the weights used for sampling")
    p.add_argument("--accumulate", type=int, help="gradient accumulation micro-batches per step")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="device (default cpu; under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--sample-every", type=int, help="steps between sample grids in DIR/samples (0: only at the end)")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="class-conditional net (labels of the data; label dropout for classifier-free guidance)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out exactly")
    p.add_argument("--config", help="a .json or .toml file with sections data, model, train (flags override it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run directory (its newest checkpoint) or a checkpoint-<step> folder")
    p.add_argument("--sampler", default="dpm_solver", help="sampler name, see `sd.samplers.available()` (default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps, for fixed-step samplers (default %(default)s)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampler option, e.g. --option order=3 --option eta=0.5 (VALUE read as JSON, else as text)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of samples (default %(default)s); under torchrun write --num-samples (torchrun takes --n for itself)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--label", "--class", dest="label", type=int,
                   help="class label for a conditional model (default: labels cycle 0, 1, …)")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance scale w of a conditional model: ε_u + w(ε_c − ε_u); "
                        "1 = conditional (default), 0 = unconditional")
    p.add_argument("--classifier", metavar="RUN",
                   help="classifier guidance s + w ∇log p(y | x_t, t) with a `train-classifier` run on the model's SDE "
                        "(a conditional checkpoint is then used through its unconditional, null-label branch)")
    p.add_argument("--classifier-scale", type=float, help="classifier guidance scale w (default 1; needs --classifier)")
    p.add_argument("--batch-size", type=int, default=256, help="samples drawn per batch (default %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default %(default)s)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="EMA (default) or raw weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown by default on rank 0)")
    p.add_argument("--inpaint-mask", metavar="FILE.npy",
                   help="inpainting: a boolean/0-1 array, True where values are known; one sample's shape or (n, …)")
    p.add_argument("--observed", metavar="FILE",
                   help="inpainting: the known values (.npy, or .npz key x), images in [0, 1], vectors in data units")
    p.add_argument("--resample", type=int, default=0, help="inpainting: RePaint resamplings per step (default 0: replacement)")
    p.add_argument("--jump-length", type=int, default=1,
                   help="inpainting: RePaint re-noises and redoes blocks of this many steps (default %(default)s)")
    p.add_argument("--out", required=True, help="FILE.npz (key x: images (n,C,H,W) in [0,1], vectors in data units) or FILE.png")


def add_likelihood_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a run directory (its newest checkpoint) or a checkpoint-<step> folder")
    p.add_argument("--data", help=f"data to score (default: the checkpoint's training data): {DATA_CHOICES}")
    p.add_argument("--n", type=int, default=100, help="samples scored, the first n of the data set (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=50, help="samples per ODE solve (default %(default)s)")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance (default %(default)s)")
    p.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance (default %(default)s)")
    p.add_argument("--hutchinson", action="store_true",
                   help="Hutchinson–Skilling divergence (1 Rademacher probe) instead of the exact one (default for D ≤ 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed: dequantisation and probes (default %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_likelihood(args: argparse.Namespace) -> int:
    """Images: bits/dim (8-bit values, uniform dequantisation) ± 95 % CI; vectors: nats per sample ± CI."""
    import math

    import torch
    from tqdm.auto import tqdm

    from .data import load, to_unit
    from .likelihood import bits_per_dim, log_likelihood
    from .training import load_checkpoint

    if args.n < 1 or args.batch_size < 1:
        raise ValueError(f"--n and --batch-size must be positive, got {args.n} and {args.batch_size}")
    ckpt = load_checkpoint(args.checkpoint, device=args.device)
    data = load(args.data or ckpt.config.data)
    if list(data.x.shape[1:]) != list(ckpt.config.model.data_shape):
        raise ValueError(f"the data's samples have shape {tuple(data.x.shape[1:])}, the model's {tuple(ckpt.config.model.data_shape)}")
    x = data.x[:args.n]
    generator = torch.Generator(args.device).manual_seed(args.seed)
    options = {"rtol": args.rtol, "atol": args.atol, "exact_divergence": False if args.hutchinson else None}
    values = []
    for start in tqdm(range(0, len(x), args.batch_size), desc="likelihood", unit="batch", disable=args.no_progress):
        batch = x[start:start + args.batch_size].to(args.device)
        if data.kind == "image":
            images = torch.round(to_unit(batch) * 255).to(torch.uint8)  # the 8-bit values the model is scored on
            values.append(bits_per_dim(ckpt.model, images, generator=generator, **options).per_image)
        else:
            values.append(log_likelihood(ckpt.model, batch, generator=generator, **options).logp.cpu())
    v = torch.cat(values).double()
    ci = 1.96 * float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    unit = "bits/dim" if data.kind == "image" else "nats per sample (log-likelihood)"
    print(f"{float(v.mean()):.4f} ± {ci:.4f} {unit} (95 % CI over {len(v)} samples of {data.name}, step {ckpt.step})")
    return 0


_TRAIN_FLAGS = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "ema_decay": "ema_decay", "accumulate": "accumulate",
                "seed": "seed", "device": "device", "checkpoint_every": "checkpoint_every", "sample_every": "sample_every",
                "weighting": "weighting", "t_sampling": "t_sampling", "compile": "compile"}


MODEL_KEYS = ("net", "net_options", "sde", "prediction", "sigma_data", "conditional")


def data_name_from_args(args: argparse.Namespace) -> str:
    """--data, else the config file's ``data``, else (when resuming) the checkpoint's."""
    from .training.checkpoint import checkpoints
    from .training.config import read_config_file

    if args.data:
        return args.data
    from_file = read_config_file(args.config).get("data") if args.config else None
    if from_file:
        return from_file
    existing = checkpoints(args.out)
    if args.resume and existing:
        return json.loads((existing[-1] / "config.json").read_text())["data"]
    raise ValueError(f"--data is required (one of: {DATA_CHOICES}) unless --config or a resumed checkpoint names it")


def run_config_from_args(args: argparse.Namespace, data_name: str, data):
    """Defaults of the data set < --config file < flags; a resumed run starts from its checkpoint's config."""
    from .training import RunConfig, TrainConfig
    from .training.checkpoint import checkpoints
    from .training.config import ModelConfig, read_config_file
    from .training.presets import net_config, preset_for

    existing = checkpoints(args.out)
    if existing and not args.resume:
        raise ValueError(f"{args.out} already holds checkpoints; pass --resume to continue it, or choose another --out")
    file_cfg: Dict[str, Any] = read_config_file(args.config) if args.config else {}
    if args.resume and existing:
        base = json.loads((existing[-1] / "config.json").read_text())
        model_cfg, train = base["model"], dict(base["train"])
    else:
        preset = preset_for(data_name, data.kind, data.x.shape[2] if data.x.dim() == 4 else 0)
        model_in = dict(file_cfg.get("model", {}))
        unknown = set(model_in) - set(MODEL_KEYS)
        if unknown:
            raise ValueError(f"config section [model] has unknown keys {sorted(unknown)}; valid keys: {list(MODEL_KEYS)}")
        conditional = bool(args.conditional or model_in.get("conditional", False))
        if conditional and data.num_classes is None:
            raise ValueError(f"--conditional needs labelled data; {data_name} has no labels")
        num_classes = data.num_classes if conditional else None
        sde = {"name": args.sde} if args.sde else model_in.get("sde", preset["sde"])
        model_cfg = {"sde": {"name": sde} if isinstance(sde, str) else dict(sde),
                     "net": net_config(args.net or model_in.get("net", preset["net"]), data.x.shape[1:], num_classes,
                                       model_in.get("net_options")),
                     "prediction": args.prediction or model_in.get("prediction", preset["prediction"]),
                     "sigma_data": float(model_in.get("sigma_data", 0.5)), "data_shape": list(data.x.shape[1:]),
                     "num_classes": num_classes}
        train = {**preset["train"], **file_cfg.get("train", {})}
    for flag, key in _TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            train[key] = value
    if args.no_progress:
        train["progress"] = False
    if model_cfg["sde"].get("name") == "learned":  # VDM: the ELBO is the only objective of a learned schedule
        if getattr(args, "weighting", None) not in (None, "likelihood"):
            raise ValueError(f"--sde learned trains by the ELBO: --weighting must be likelihood (or left out), got {args.weighting}")
        train["weighting"] = "likelihood"
    return RunConfig(data=data_name, model=ModelConfig(**model_cfg), train=TrainConfig(**train))


def run_train(args: argparse.Namespace) -> int:
    from .data import load
    from .nets import build
    from .training import Trainer
    from .training import distributed
    from .training.checkpoint import build_model, checkpoints

    data_name = data_name_from_args(args)
    data = load(data_name)
    config = run_config_from_args(args, data_name, data)
    env = distributed.setup(config.train.device)
    try:
        import torch

        torch.manual_seed(config.train.seed)  # the initial weights
        model = build_model(config, build(config.model.net))
        trainer = Trainer(model, data, config.train, out_dir=args.out, resume=args.resume and bool(checkpoints(args.out)),
                          data_name=data_name, env=env)
        record = trainer.fit()
        if env.is_main:
            loss = f", loss {record['loss']:.4f}" if record else ""
            print(f"trained {trainer.step} steps{loss}; checkpoint in {args.out}", file=sys.stderr)
    finally:
        distributed.teardown(env)
    return 0


def _inpaint_inputs(args: argparse.Namespace, shape):
    """(mask, observed) in model units from --inpaint-mask/--observed, or None; each of one sample's shape or (n, …)."""
    import numpy as np
    import torch

    if (args.inpaint_mask is None) != (args.observed is None):
        raise ValueError("--inpaint-mask and --observed go together")
    if args.inpaint_mask is None:
        return None
    arrays = []
    for flag, path in (("--inpaint-mask", args.inpaint_mask), ("--observed", args.observed)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} file not found: {path}")
        loaded = np.load(path)
        value = loaded["x"] if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
        if value.shape not in (tuple(shape), (args.n, *shape)):
            raise ValueError(f"{flag} must have one sample's shape {tuple(shape)} or ({args.n}, *{tuple(shape)}), got {value.shape}")
        arrays.append(torch.as_tensor(np.asarray(value)))
    mask, observed = arrays[0].bool(), arrays[1].float()
    if len(shape) == 3:  # images: [0, 1] on the command line, [−1, 1] in the model
        if observed.min() < 0 or observed.max() > 1:
            raise ValueError("--observed images must lie in [0, 1]")
        observed = observed * 2 - 1
    return mask, observed


def parse_options(items) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--option must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def run_sample(args: argparse.Namespace) -> int:
    import torch

    from .sample import chunks, draw_samples, make_sampler, save_samples
    from .training import distributed, load_checkpoint

    if args.n < 1 or args.batch_size < 1:
        raise ValueError(f"--n and --batch-size must be positive, got {args.n} and {args.batch_size}")
    if not args.out.endswith((".npz", ".png")):
        raise ValueError(f"--out must end in .npz or .png, got {args.out}")
    env = distributed.setup(args.device)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=env.device, weights=args.weights)
        sampler = make_sampler(args.sampler, args.steps, **parse_options(args.option))
        shape = tuple(ckpt.config.model.data_shape)
        labels = None
        classes = ckpt.config.model.num_classes
        classifier = None
        if args.classifier is not None:
            from .cli_classifier import classifier_for

            classifier = classifier_for(args.classifier, args.checkpoint, ckpt.config, env.device)
            if args.guidance_scale != 1.0:
                raise ValueError("--guidance-scale (classifier-free) and --classifier cannot be combined")
            classes = classifier.num_classes  # the labels are the classifier's classes
        elif args.classifier_scale is not None:
            raise ValueError("--classifier-scale needs --classifier")
        if classes is not None:
            if args.label is not None and not 0 <= args.label < classes:
                raise ValueError(f"--label must lie in [0, {classes - 1}], got {args.label}")
            labels = torch.full((args.n,), args.label) if args.label is not None else torch.arange(args.n) % classes
        elif args.label is not None or args.guidance_scale != 1.0:
            raise ValueError("--label/--class and --guidance-scale need a class-conditional checkpoint (trained with --conditional); "
                             "--label/--class also works with --classifier")
        model = ckpt.model
        if classifier is not None:
            from .guidance import ClassifierGuidance

            model = ClassifierGuidance(model, classifier, 1.0 if args.classifier_scale is None else args.classifier_scale)
        elif classes is not None and args.guidance_scale != 1.0:
            from .guidance import ClassifierFreeGuidance

            model = ClassifierFreeGuidance(model, args.guidance_scale, null_label=classes)
        inpaint = _inpaint_inputs(args, shape)
        mine = [k for k, _ in chunks(args.n, args.batch_size)][env.rank::env.world_size]
        parts = []
        for k in mine:
            if inpaint is not None:
                from .inverse import Inpaint

                rows = slice(k * args.batch_size, (k + 1) * args.batch_size)
                mask, observed = (a if a.dim() == len(shape) else a[rows] for a in inpaint)
                sampler_k = Inpaint(sampler, mask.to(env.device), observed.to(env.device), resample=args.resample,
                                    jump_length=args.jump_length)
            else:
                sampler_k = sampler
            x = draw_samples(model, sampler_k, args.n, shape, args.seed, device=env.device, labels=labels,
                             batch_size=args.batch_size, only=[k], progress=env.is_main and not args.no_progress)
            parts.append((k, x))
        gathered = distributed.gather_chunks(parts, env)
        if env.is_main:
            x = torch.cat([t for _, t in gathered])
            save_samples(x, args.out)
            print(f"wrote {len(x)} samples to {args.out}", file=sys.stderr)
    finally:
        distributed.teardown(env)
    return 0
