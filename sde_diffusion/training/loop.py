"""The one training loop: denoising score matching with AdamW, warm-up, clipping, EMA and checkpoints.

    for each step:  lr ← lr₀ · min(1, step/warmup)
                    g ← ∇_θ dsm_loss(model, x₀ batch)     (accumulated over micro-batches, averaged over processes)
                    clip ‖g‖ ≤ grad_clip;  AdamW step;  θ_ema ← β θ_ema + (1 − β) θ

On a :class:`~sde_diffusion.sde.LearnedVPSDE` the loss is :func:`~sde_diffusion.losses.vdm_loss` (the −ELBO per
dimension) and the optimizer also steps the schedule: its end points by the ELBO, its interior by VDM's variance
objective ∇E[L²]; the checkpoint's SDE spec carries its current weights.

Everything random comes from generators whose state is checkpointed (the loss's t and ε, label
dropout, torch's global RNG for dropout) and the batch order is a function of the step
(``DistributedSampler`` with the run's seed and the epoch), so a run resumed from a checkpoint continues
bit for bit as if it had never stopped. A NaN/Inf loss or gradient stops the run before the optimizer
step with :class:`NonFiniteLossError` naming the step; the checkpoints already written stay as they were.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .._io import write_text
from ..losses import dsm_loss, vdm_loss
from ..model import ScoreModel
from ..sde import LearnedVPSDE
from . import distributed
from .checkpoint import load_checkpoint, remove_stale_temporaries, resolve, save_checkpoint
from .config import ModelConfig, RunConfig, TrainConfig, sde_spec
from .ema import EMA


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN/Inf; the message names the step."""


class Trainer:
    """Trains ``model`` (a :class:`ScoreModel` around a ``sd.nets`` network) on ``data`` (an ``sd.data.Dataset``).

    ``out_dir`` receives checkpoints, ``log.jsonl`` and sample grids (rank 0 only); without it nothing is
    written. ``resume=True`` continues from the newest checkpoint in ``out_dir``.
    """

    def __init__(self, model: ScoreModel, data, config: Optional[TrainConfig] = None, *, out_dir=None,
                 resume: bool = False, data_name: str = "custom", env: Optional[distributed.Distributed] = None):
        self.config = config or TrainConfig()
        cfg = self.config
        self.env = env or distributed.setup(cfg.device)
        self.device = self.env.device
        self.data = data
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device) if getattr(data, "y", None) is not None else None
        self.num_classes = getattr(data, "num_classes", None)
        self.conditional = getattr(model.net, "config", {}).get("num_classes") is not None
        if self.conditional and self.y is None:
            raise ValueError("the network is class-conditional (num_classes set) but the data has no labels")
        per_rank, rem = divmod(cfg.batch_size, self.env.world_size * cfg.accumulate)
        if rem or per_rank < 1:
            raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of processes × accumulate "
                             f"({self.env.world_size} × {cfg.accumulate})")
        if len(self.x) < per_rank * self.env.world_size * cfg.accumulate:
            raise ValueError(f"batch_size ({cfg.batch_size}) exceeds the data set's {len(self.x)} samples")
        self.micro_batch = per_rank
        self.out_dir = Path(out_dir) if out_dir is not None else None

        self.model = model
        self.net = model.net.to(self.device)
        self.image = self.x.dim() == 4
        if self.image and cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.run_config = RunConfig(
            data=data_name,
            model=ModelConfig(sde=sde_spec(model.sde), net=dict(getattr(self.net, "config", {})), prediction=model.prediction,
                              sigma_data=float(getattr(model, "sigma_data", 0.5)), data_shape=list(self.x.shape[1:]),
                              num_classes=self.num_classes if self.conditional else None, kind=getattr(model, "kind", "score")),
            train=cfg)
        torch.manual_seed(cfg.seed + self.env.rank)
        self.loss_generator = torch.Generator(self.device).manual_seed(cfg.seed * 1000 + self.env.rank)
        decay = {"weight_decay": cfg.weight_decay, "betas": cfg.adam_betas}
        self._parameters = list(self.net.parameters())  # walking the module tree every step costs ~0.1 ms
        #: a learned forward process trains with the net (VDM): not clipped, not in DDP's module, in the checkpoint's spec
        self.schedule = model.sde if isinstance(model.sde, LearnedVPSDE) and getattr(model, "kind", "score") == "score" else None
        if self.schedule is not None and cfg.weighting != "likelihood":
            raise ValueError(f"a LearnedVPSDE trains by the ELBO: set weighting='likelihood', got {cfg.weighting!r}")
        schedule_parameters = self.schedule.to(self.device).parameters() if self.schedule is not None else []
        self.optimizer = torch.optim.AdamW(self._parameters + schedule_parameters, lr=cfg.lr, **decay)
        self.ema = EMA(self.net, cfg.ema_decay)
        self.step = 0
        if resume:
            self._resume()
        forward_net = torch.compile(self.net) if cfg.compile else self.net
        self.train_model = model.with_net(distributed.wrap(forward_net, self.env))
        self._batches_per_epoch = len(self.x) // (self.env.world_size * per_rank * cfg.accumulate)
        self._epoch_cache = (-1, None)

    # ----- one step -----
    def _indices(self, step: int, micro: int) -> Tensor:
        """Rows of this rank's micro-batch ``micro`` of optimizer step ``step`` (0-based): a function of the step only."""
        epoch, k = divmod(step, self._batches_per_epoch)
        if self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, distributed.epoch_indices(len(self.x), epoch, self.config.seed, self.env).to(self.device))
        per_step = self.micro_batch * self.config.accumulate
        start = k * per_step + micro * self.micro_batch
        return self._epoch_cache[1][start:start + self.micro_batch]

    def _batch(self, step: int, micro: int):
        idx = self._indices(step, micro)
        x0 = self.x[idx]
        if self.image and self.config.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        kwargs: Dict[str, Any] = {}
        if self.conditional:
            y = self.y[idx]
            drop = torch.rand(y.shape, generator=self.loss_generator, device=self.device) < self.config.label_dropout
            kwargs["y"] = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return x0, kwargs

    def _autocast(self):
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self, x0: Tensor, model_kwargs: Dict[str, Any]) -> Tensor:
        """The objective of one micro-batch: :func:`~sde_diffusion.losses.dsm_loss` with the configured weighting."""
        cfg = self.config
        if self.schedule is not None:  # −ELBO in nats per dimension; the schedule's interior descends its variance
            per_sample = vdm_loss(self.train_model, x0, t_sampling=cfg.t_sampling, variance_trick=True,
                                  generator=self.loss_generator, model_kwargs=model_kwargs)
            return per_sample.mean() / x0[0].numel()
        return dsm_loss(self.train_model, x0, cfg.weighting, t_sampling=cfg.t_sampling,
                        generator=self.loss_generator, model_kwargs=model_kwargs)

    def train_step(self) -> Dict[str, float]:
        """One optimizer step; returns the loss (mean over micro-batches of this rank) and the gradient norm."""
        cfg = self.config
        lr = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.accumulate):
            x0, kwargs = self._batch(self.step, micro)
            last = micro == cfg.accumulate - 1
            sync = contextlib.nullcontext() if last or not self.env.active else self.train_model.net.no_sync()
            with sync, self._autocast():
                loss = self.loss(x0, kwargs)
            (loss / cfg.accumulate).backward()
            total += loss.detach() / cfg.accumulate
        if self.schedule is not None and self.env.active:  # DDP averages the net's gradients, not the schedule's
            for p in self.schedule.parameters():
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.env.world_size
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._parameters, clip)
        loss_value, norm_value = float(total), float(grad_norm)
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise NonFiniteLossError(f"training stopped at step {self.step + 1}: the {what} is "
                                     f"{loss_value if what == 'loss' else norm_value} (the last checkpoint is kept)")
        self.optimizer.step()
        self.ema.update(self.net)
        self.step += 1
        return {"loss": loss_value, "grad_norm": norm_value, "lr": lr}

    # ----- the loop -----
    def fit(self) -> Dict[str, float]:
        """Train until ``config.steps``; returns the last logged record."""
        cfg, main = self.config, self.env.is_main and self.out_dir is not None
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir)
            write_text(self.out_dir / "config.json", json.dumps(self.run_config.to_dict(), indent=1))
            self._trim_log()
        bar = None
        if self.env.is_main and cfg.progress and self.step < cfg.steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        record: Dict[str, float] = {}
        window, start, since = [], time.perf_counter(), self.step
        self.net.train()
        while self.step < cfg.steps:
            stats = self.train_step()
            window.append(stats["loss"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - start
                record = {"step": self.step, "loss": sum(window) / len(window), "lr": stats["lr"],
                          "grad_norm": stats["grad_norm"],
                          "images_per_s": (self.step - since) * cfg.batch_size / max(elapsed, 1e-9)}
                window, start, since = [], time.perf_counter(), self.step
                if main:
                    with open(self.out_dir / "log.jsonl", "a") as log:
                        log.write(json.dumps(record) + "\n")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != cfg.steps:
                self.save()
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step != cfg.steps:
                self.write_samples()
        if bar is not None:
            bar.close()
        self.save()
        self.write_samples()
        return record

    # ----- checkpoints -----
    def training_state(self) -> Dict[str, Any]:
        """Optimizer, EMA count and every rank's RNG streams (a collective call when several processes train)."""
        mine = {"torch": torch.get_rng_state(), "loss": self.loss_generator.get_state().cpu()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        streams = distributed.gather_object(mine, self.env)
        return {"optimizer": self.optimizer.state_dict(), "ema_updates": self.ema.num_updates, "rng": streams}

    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current step (rank 0 writes; every rank takes part)."""
        state, path = self.training_state(), None
        if self.schedule is not None:  # the checkpoint holds the schedule's current weights
            self.run_config.model.sde = sde_spec(self.model.sde)
        if self.env.is_main and self.out_dir is not None:
            path = save_checkpoint(self.out_dir, self.step, self.run_config, self.net.state_dict(),
                                   self.ema.state_dict(), state, keep=self.config.keep)
        distributed.barrier(self.env)
        return path

    def _resume(self) -> None:
        if self.out_dir is None:
            raise ValueError("resume=True needs out_dir (the run directory to continue)")
        ckpt = load_checkpoint(resolve(self.out_dir), weights="model", training_state=True, kind=self.run_config.model.kind)
        mine, theirs = self.run_config.model, ckpt.config.model
        if self.schedule is not None and theirs.sde.get("name") == "learned":  # the schedule resumes from its weights
            self.schedule.load_spec(theirs.sde)
            mine.sde = sde_spec(self.model.sde)
        if (mine.net, mine.sde, mine.prediction, mine.data_shape) != (theirs.net, theirs.sde, theirs.prediction, theirs.data_shape):
            raise ValueError(f"cannot resume {ckpt.path}: its model (net, SDE, prediction, data shape) differs from this run's")
        self.net.load_state_dict(ckpt.net_state)
        self.ema.load_state_dict(ckpt.ema_state, ckpt.state["ema_updates"])
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.step = ckpt.step
        streams = ckpt.state["rng"]
        if len(streams) == self.env.world_size:
            mine_rng = streams[self.env.rank]
            torch.set_rng_state(mine_rng["torch"])
            self.loss_generator.set_state(mine_rng["loss"])
            if "cuda" in mine_rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine_rng["cuda"], self.device)
        else:  # another number of processes: fresh streams, derived from the step
            torch.manual_seed(self.config.seed + self.env.rank + 7919 * self.step)
            self.loss_generator.manual_seed(self.config.seed * 1000 + self.env.rank + 7919 * self.step)

    def _trim_log(self) -> None:
        """After a resume, drop log lines past the resumed step (they will be written again)."""
        log = self.out_dir / "log.jsonl"
        if not log.exists():
            return
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= self.step]
        if len(kept) != len(lines):
            write_text(log, "".join(ln + "\n" for ln in kept))

    # ----- samples -----
    def ema_model(self) -> ScoreModel:
        """The model with the EMA weights (what sampling uses)."""
        return self.model.with_net(self.ema.net)

    def write_samples(self) -> Optional[Path]:
        """A sample grid (images), scatter plot (2-D vectors) or ``.npz`` (other vectors) from the EMA model."""
        if not (self.env.is_main and self.out_dir is not None):
            return None
        from ..sample import draw_samples, save_samples

        y = None
        if self.conditional:
            y = torch.arange(self.config.sample_n, device=self.device) % self.num_classes
        x = draw_samples(self.ema_model(), self.config.sampler, n=self.config.sample_n, shape=tuple(self.x.shape[1:]),
                         seed=self.config.seed, steps=self.config.sample_steps, device=self.device, labels=y)
        plottable = self.image or tuple(self.x.shape[1:]) == (2,)
        path = self.out_dir / "samples" / f"step_{self.step:07d}.{'png' if plottable else 'npz'}"
        save_samples(x, path, reference=self.x[:2000] if not self.image else None)
        return path
