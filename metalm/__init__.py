"""metalm: meta-learning adaptation of language models.

The small public API::

    model = metalm.load_model(path_or_config)               # a transformers causal LM, eval mode
    model = metalm.apply_adapter(model, AdapterConfig())     # LoRA through PEFT (or head/bitfit/full)
    sel = metalm.select_parameters(model, adapter, meta)     # fast weights vs meta-parameters
    adapted = metalm.adapt(model, sel.fast_params(model), support, steps=5, lr=0.1)   # the inner loop
    algo = metalm.build_algorithm("maml", model, sel, {...}) # MAML, FOMAML, Reptile, ANIL, Meta-SGD, MAML++
    algo.step(episodes, torch.optim.AdamW(algo.meta_parameters().values()))
"""

from . import data
from .algorithms import MetaLearner, algorithm_config, algorithm_names, build_algorithm, register_algorithm
from .config import AdapterConfig, InnerConfig, MetaConfig, from_dict, load_yaml, to_dict
from .data import Episode, SyntheticTasks
from .errors import BatchError, ConfigError, DataNotFoundError, MetalmError, NonFiniteError, TaskError
from .inner import Trajectory, adapt, adapt_trajectory
from .losses import lm_loss, lm_loss_and_accuracy, prepare_batch, target_logits
from .models import apply_adapter, load_model, tiny_config
from .params import ParameterSelection, select_parameters

__version__ = "0.1.0"

__all__ = [
    "data", "AdapterConfig", "BatchError", "ConfigError", "DataNotFoundError", "Episode", "TaskError",
    "InnerConfig", "MetaConfig", "MetaLearner",
    "MetalmError", "NonFiniteError", "ParameterSelection", "SyntheticTasks", "Trajectory", "adapt", "adapt_trajectory",
    "algorithm_config", "algorithm_names", "apply_adapter", "build_algorithm", "from_dict", "lm_loss",
    "lm_loss_and_accuracy", "load_model", "load_yaml", "prepare_batch", "register_algorithm",
    "select_parameters", "target_logits", "tiny_config", "to_dict",
]
