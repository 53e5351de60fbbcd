"""Score networks: ``net(x, t, y=None) -> Tensor`` of x's shape, rebuilt from ``net.config`` by :func:`build`.

:class:`MLP` for vectors (B, D), :class:`UNet` (DDPM++-style) for images (B, C, H, W); ``t`` is the noise
conditioning value (continuous time, a DDPM step index or EDM's c_noise) and ``y`` optional class labels,
index ``num_classes`` being the null label of classifier-free guidance.
"""
from .configs import CONFIGS
from .embeddings import FourierEmbedding, SinusoidalEmbedding, TimeEmbedding
from .mlp import MLP
from .registry import NETS, build, parameter_count
from .unet import UNet

__all__ = ["CONFIGS", "FourierEmbedding", "MLP", "NETS", "SinusoidalEmbedding", "TimeEmbedding", "UNet", "build",
           "parameter_count"]
