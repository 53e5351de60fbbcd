"""Training a score network by denoising score matching: the loop, EMA, checkpoints, DDP, configs; noisy classifiers."""
from .checkpoint import Checkpoint, CheckpointError, checkpoints, load_checkpoint, save_checkpoint
from .classifier import ClassifierTrainer, NoisyClassifier, classifier_loss, load_classifier
from .config import ModelConfig, RunConfig, TrainConfig, build_sde, read_config_file, sde_spec
from .ema import EMA
from .loop import NonFiniteLossError, Trainer

__all__ = [
    "Trainer", "TrainConfig", "ModelConfig", "RunConfig", "EMA", "NonFiniteLossError",
    "Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "checkpoints",
    "build_sde", "sde_spec", "read_config_file",
    "ClassifierTrainer", "NoisyClassifier", "classifier_loss", "load_classifier",
]
