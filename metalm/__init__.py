"""metalm: meta-learning adaptation of language models.

The small public API::

    model = metalm.load_model(path_or_config)               # a transformers causal LM, eval mode
    model = metalm.apply_adapter(model, AdapterConfig())     # LoRA through PEFT (or head/bitfit/full)
    sel = metalm.select_parameters(model, adapter, meta)     # fast weights vs meta-parameters
    adapted = metalm.adapt(model, sel.fast_params(model), support, steps=5, lr=0.1)   # the inner loop
    algo = metalm.build_algorithm("maml", model, sel, {...}) # MAML, FOMAML, Reptile, ANIL, Meta-SGD, MAML++
    algo.step(episodes, torch.optim.AdamW(algo.meta_parameters().values()))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public names, imported on first use (PEP 562): `metalm --help` and a run folder's lock answer
# before torch and transformers load (several seconds).
_EXPORTS = {
    "data": "", "Episode": ".data", "SyntheticTasks": ".data",
    "MetaLearner": ".algorithms", "algorithm_config": ".algorithms", "algorithm_names": ".algorithms",
    "build_algorithm": ".algorithms", "register_algorithm": ".algorithms",
    "AdapterConfig": ".config", "InnerConfig": ".config", "MetaConfig": ".config", "from_dict": ".config",
    "load_yaml": ".config", "to_dict": ".config",
    "BatchError": ".errors", "ConfigError": ".errors", "DataNotFoundError": ".errors", "MetalmError": ".errors",
    "DivergedError": ".errors", "NonFiniteError": ".errors", "PackageUnavailableError": ".errors",
    "TaskError": ".errors",
    "Trajectory": ".inner", "UpdateRule": ".inner", "adapt": ".inner", "adapt_trajectory": ".inner",
    "lm_loss": ".losses", "lm_loss_and_accuracy": ".losses", "prepare_batch": ".losses", "target_logits": ".losses",
    "evaluate": ".eval.recipe", "diagnose": ".diagnostics.recipe",
    "apply_adapter": ".models", "load_model": ".models", "tiny_config": ".models",
    "ParameterSelection": ".params", "select_parameters": ".params",
}

if TYPE_CHECKING:
    from . import data
    from .algorithms import MetaLearner, algorithm_config, algorithm_names, build_algorithm, register_algorithm
    from .config import AdapterConfig, InnerConfig, MetaConfig, from_dict, load_yaml, to_dict
    from .data import Episode, SyntheticTasks
    from .diagnostics.recipe import diagnose
    from .errors import (
        BatchError,
        ConfigError,
        DataNotFoundError,
        DivergedError,
        MetalmError,
        NonFiniteError,
        PackageUnavailableError,
        TaskError,
    )
    from .eval.recipe import evaluate
    from .inner import Trajectory, UpdateRule, adapt, adapt_trajectory
    from .losses import lm_loss, lm_loss_and_accuracy, prepare_batch, target_logits
    from .models import apply_adapter, load_model, tiny_config
    from .params import ParameterSelection, select_parameters


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:  # a submodule (metalm.eval, metalm.hub, ...) loads on first use, as an import would
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'metalm' has no attribute {name!r}") from None
    module = importlib.import_module(_EXPORTS[name] or f".{name}", __name__)
    value = module if not _EXPORTS[name] else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "data", "AdapterConfig", "BatchError", "ConfigError", "DataNotFoundError", "Episode", "TaskError",
    "InnerConfig", "MetaConfig", "MetaLearner",
    "DivergedError", "MetalmError", "NonFiniteError", "PackageUnavailableError",
    "ParameterSelection", "SyntheticTasks", "Trajectory", "UpdateRule", "adapt",
    "adapt_trajectory",
    "algorithm_config", "algorithm_names", "apply_adapter", "build_algorithm", "diagnose", "evaluate", "from_dict",
    "lm_loss",
    "lm_loss_and_accuracy", "load_model", "load_yaml", "prepare_batch", "register_algorithm",
    "select_parameters", "target_logits", "tiny_config", "to_dict",
]
