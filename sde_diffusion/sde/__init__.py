"""The SDE family: one abstract :class:`LinearSDE` and its closed-form, tabulated, discrete and learned members."""
from .base import LinearSDE, randn
from .cosine import CosineVPSDE
from .discrete import DiscreteVPSDE
from .learned import LearnedVPSDE
from .subvp import SubVPSDE
from .tabulated import TabulatedSDE
from .ve import VESDE
from .vp import VPSDE

__all__ = ["LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "TabulatedSDE", "LearnedVPSDE", "randn"]
