"""The SDE family: one abstract :class:`LinearSDE` and its closed-form, tabulated and discrete members."""
from .base import LinearSDE, randn
from .cosine import CosineVPSDE
from .discrete import DiscreteVPSDE
from .subvp import SubVPSDE
from .tabulated import TabulatedSDE
from .ve import VESDE
from .vp import VPSDE

__all__ = ["LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "TabulatedSDE", "randn"]
