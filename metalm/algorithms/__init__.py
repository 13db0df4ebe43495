"""Meta-learning algorithms: each is a small outer step on the one inner loop, registered by name."""

from .anil import ANIL, ANILConfig
from .base import (
    MetaLearner,
    algorithm_class,
    algorithm_config,
    algorithm_names,
    build_algorithm,
    register_algorithm,
)
from .maml import FOMAML, MAML, FOMAMLConfig, MAMLConfig, multi_step_loss_weights
from .mamlpp import MAMLPlusPlus, MAMLPlusPlusConfig
from .metaicl import MetaICL, MetaICLConfig
from .metasgd import MetaSGD, MetaSGDConfig
from .multitask import Multitask, MultitaskConfig
from .reptile import Reptile, ReptileConfig

__all__ = [
    "ANIL", "ANILConfig", "FOMAML", "FOMAMLConfig", "MAML", "MAMLConfig", "MAMLPlusPlus", "MAMLPlusPlusConfig",
    "MetaICL", "MetaICLConfig", "MetaLearner", "MetaSGD", "MetaSGDConfig", "Multitask", "MultitaskConfig",
    "Reptile", "ReptileConfig", "algorithm_class", "algorithm_config", "algorithm_names", "build_algorithm",
    "multi_step_loss_weights", "register_algorithm",
]
