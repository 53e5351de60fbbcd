"""``sde-diffusion train-classifier``: a noise-conditional classifier p_φ(y | x_t, t) for classifier guidance.

    sde-diffusion train-classifier --data digits --like runs/digits --out runs/clf
    sde-diffusion sample --checkpoint runs/digits --classifier runs/clf --classifier-scale 2 --class 3 --out s.png

The classifier must have seen data noised by the SDE of the score model it guides: ``--like RUN`` copies that
SDE (and checks the data shape) from a score-model run, and ``sample --classifier`` refuses a mismatch.
Per-data-set defaults < flags; a resumed run starts from its checkpoint's settings. Works under ``torchrun``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Dict

from .training.config import SDES

#: defaults of ``train-classifier --data NAME`` (2 CPU cores: digits in about two minutes)
PRESETS: Dict[str, Dict[str, Any]] = {
    "digits": {"net": "tiny", "train": {"steps": 600, "batch_size": 128, "lr": 2e-3, "warmup": 50, "ema_decay": 0.995,
                                        "checkpoint_every": 200, "log_every": 50}},
    "mnist": {"net": "small", "train": {"steps": 3000, "batch_size": 64, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999,
                                        "checkpoint_every": 1000, "log_every": 100}},
    "vector": {"net": "mlp", "train": {"steps": 2000, "batch_size": 512, "lr": 2e-3, "warmup": 100, "ema_decay": 0.995,
                                       "checkpoint_every": 1000, "log_every": 100}},
}
_TRAIN_FLAGS = ("steps", "batch_size", "lr", "seed", "device", "checkpoint_every")


def add_train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="labelled training data: digits, mnist, an .npz with keys x and y, or an image folder "
                                  "with one subfolder per class (default: the --like run's data)")
    p.add_argument("--out", required=True, help="run directory: checkpoints and log.jsonl")
    p.add_argument("--like", metavar="RUN", help="a score-model run (or checkpoint folder) to guide: copies its SDE, "
                                                 "checks its data shape")
    p.add_argument("--sde", choices=sorted(SDES), help="forward SDE when there is no --like (default vp)")
    p.add_argument("--net", help="classifier: tiny | small (images, UNet encoders) | mlp (vectors); default per data set")
    p.add_argument("--steps", type=int, help="optimizer steps (total, also when resuming)")
    p.add_argument("--batch-size", type=int, help="batch size per step, over all processes")
    p.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="device (default cpu; under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_config_of(path: str, kind: str, flag: str):
    """The RunConfig of a run directory or checkpoint folder, which must hold a model of ``kind``."""
    from .training import RunConfig
    from .training.checkpoint import resolve

    config = RunConfig.from_dict(json.loads((resolve(path) / "config.json").read_text()))
    if config.model.kind != kind:
        what = {"score": "a score model", "classifier": "a classifier"}
        raise ValueError(f"{flag} {path} holds {what[config.model.kind]}, expected {what[kind]}")
    return config


def _preset(data_name: str, data) -> Dict[str, Any]:
    if data_name in PRESETS:
        return PRESETS[data_name]
    if data.kind == "image":
        return {**PRESETS["digits"], "net": "tiny" if data.x.shape[2] <= 16 else "small"}
    return PRESETS["vector"]


def classifier_run_config(args: argparse.Namespace, data_name: str, data, resumed=None, like=None):
    """Presets of the data set (or the resumed checkpoint's config ``resumed``) < the --like run's SDE < flags."""
    from .nets import classifier_config
    from .training import ModelConfig, RunConfig, TrainConfig

    shape, classes = list(data.x.shape[1:]), data.num_classes
    if resumed is not None:
        model, train = resumed.model, dataclasses.asdict(resumed.train)
    else:
        preset = _preset(data_name, data)
        model = ModelConfig(sde={"name": "vp"}, net=classifier_config(preset["net"], shape, classes), prediction="logits",
                            data_shape=shape, num_classes=classes, kind="classifier")
        train = dict(preset["train"])
    if like is not None:
        if like.model.data_shape != shape:
            raise ValueError(f"--like {args.like}: its model's samples have shape {tuple(like.model.data_shape)}, "
                             f"the data's {tuple(shape)}")
        model.sde = like.model.sde
    if args.sde:
        model.sde = {"name": args.sde}
    if args.net:
        model.net = classifier_config(args.net, shape, classes)
    for key in _TRAIN_FLAGS:
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    if args.no_progress:
        train["progress"] = False
    return RunConfig(data=data_name, model=model, train=TrainConfig(**train))


def run_train_classifier(args: argparse.Namespace) -> int:
    import torch

    from .data import load
    from .nets import build
    from .training import ClassifierTrainer, distributed
    from .training.checkpoint import build_model, checkpoints

    if args.like and args.sde:
        raise ValueError("--like and --sde exclude each other: --like copies the SDE of the model to guide")
    existing = checkpoints(args.out)
    if existing and not args.resume:
        raise ValueError(f"{args.out} already holds checkpoints; pass --resume to continue it, or choose another --out")
    resumed = _run_config_of(str(existing[-1]), "classifier", "--out") if args.resume and existing else None
    like = _run_config_of(args.like, "score", "--like") if args.like else None
    data_name = args.data or (resumed.data if resumed else None) or (like.data if like else None)
    if not data_name:
        raise ValueError("--data is required (labelled data: digits, mnist, an .npz with y, a class-folder image set) "
                         "unless --like or a resumed checkpoint names it")
    data = load(data_name)
    if data.y is None:
        raise ValueError(f"train-classifier needs labelled data; {data_name} has no labels "
                         "(labelled: digits, mnist, an .npz with key y, an image folder with class subfolders)")
    config = classifier_run_config(args, data_name, data, resumed, like)
    env = distributed.setup(config.train.device)
    try:
        torch.manual_seed(config.train.seed)  # the initial weights
        classifier = build_model(config, build(config.model.net))
        trainer = ClassifierTrainer(classifier, data, config.train, out_dir=args.out, resume=resumed is not None,
                                    data_name=data_name, env=env)
        record = trainer.fit()
        if env.is_main:
            loss = f", cross-entropy {record['loss']:.4f}" if record else ""
            print(f"trained the classifier {trainer.step} steps{loss}; checkpoint in {args.out}", file=sys.stderr)
    finally:
        distributed.teardown(env)
    return 0


def classifier_for(path: str, checkpoint: str, config, device):
    """The classifier of the ``train-classifier`` run ``path``, refused unless its SDE and data shape are those of
    the score model's run ``config`` (from ``checkpoint``): the guidance gradient is only right on the SDE it learned."""
    from .training import load_classifier

    classifier, _, clf_config = load_classifier(path, device=device)
    if clf_config.model.sde != config.model.sde:
        raise ValueError(f"--classifier {path} was trained on the SDE {clf_config.model.sde}, the model on "
                         f"{config.model.sde}; train it with `train-classifier --like {checkpoint}`")
    if clf_config.model.data_shape != config.model.data_shape:
        raise ValueError(f"--classifier {path} classifies samples of shape {tuple(clf_config.model.data_shape)}, "
                         f"the model draws {tuple(config.model.data_shape)}")
    return classifier
