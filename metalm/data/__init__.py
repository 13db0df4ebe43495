"""Episodes and data for the inner and outer loops."""

from .episode import Episode
from .synthetic import SyntheticTasks

__all__ = ["Episode", "SyntheticTasks"]
