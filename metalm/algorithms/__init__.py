"""Meta-learning algorithms: each is a small outer step on the one inner loop, registered by name
(variants that only change a config, like FOMAML, ANIL, Meta-SGD and MAML++, register MAML again)."""

from .anil import ANILConfig
from .base import (
    MetaLearner,
    algorithm_class,
    algorithm_config,
    algorithm_names,
    build_algorithm,
    register_algorithm,
)
from .hyperlora import HyperLoRA, HyperLoRAConfig
from .imaml import IMAML, IMAMLConfig, implicit_task_gradient
from .library import LoRALibrary, LoRALibraryConfig
from .maml import MAML, FOMAMLConfig, MAMLConfig, multi_step_loss_weights
from .mamlpp import MAMLPlusPlusConfig
from .metaicl import MetaICL, MetaICLConfig
from .metasgd import MetaSGDConfig
from .multitask import Multitask, MultitaskConfig
from .reptile import Reptile, ReptileConfig

__all__ = [
    "ANILConfig", "FOMAMLConfig", "HyperLoRA", "HyperLoRAConfig", "IMAML", "IMAMLConfig", "LoRALibrary",
    "LoRALibraryConfig", "MAML", "MAMLConfig",
    "MAMLPlusPlusConfig",
    "MetaICL", "MetaICLConfig", "MetaLearner", "MetaSGDConfig", "Multitask", "MultitaskConfig",
    "Reptile", "ReptileConfig", "algorithm_class", "algorithm_config", "algorithm_names", "build_algorithm",
    "implicit_task_gradient", "multi_step_loss_weights", "register_algorithm",
]
