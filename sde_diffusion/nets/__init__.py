"""Score networks: ``net(x, t, y=None) -> Tensor`` of x's shape, rebuilt from ``net.config`` by :func:`build`.

:class:`MLP` for vectors (B, D), :class:`UNet` (DDPM++-style) for images (B, C, H, W); ``t`` is the noise
conditioning value (continuous time, a DDPM step index or EDM's c_noise) and ``y`` optional class labels,
index ``num_classes`` being the null label of classifier-free guidance. Noise-conditional classifiers
``net(x, t) -> logits`` for classifier guidance: :class:`UNetClassifier` (images), :class:`MLPClassifier` (vectors).
"""
from .classifier import CLASSIFIER_CONFIGS, MLPClassifier, UNetClassifier, classifier_config
from .configs import CONFIGS
from .embeddings import FourierEmbedding, SinusoidalEmbedding, TimeEmbedding
from .mlp import MLP
from .registry import NETS, build, parameter_count
from .unet import UNet

__all__ = ["CLASSIFIER_CONFIGS", "CONFIGS", "FourierEmbedding", "MLP", "MLPClassifier", "NETS", "SinusoidalEmbedding",
           "TimeEmbedding", "UNet", "UNetClassifier", "build", "classifier_config", "parameter_count"]
