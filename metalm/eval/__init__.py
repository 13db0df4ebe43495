"""Few-shot evaluation: adapt then score, for every method on the same held-out episodes."""

from .fewshot import Harness, Trained, eval_tasks
from .inits import Init, adapted_params, init_from_values, init_of, query_metrics
from .scoring import exact_match, greedy_generate, normalize_answer, option_scores, token_f1
from .settings import BASELINES, EvalConfig, known_methods
from .stats import mean_ci95, paired
from .summary import format_paired, format_table, format_winner, summarize

__all__ = ["BASELINES", "EvalConfig", "Harness", "Init", "Trained", "adapted_params", "eval_tasks", "known_methods",
           "exact_match", "format_paired", "format_table", "format_winner", "greedy_generate", "init_from_values",
           "init_of", "mean_ci95", "normalize_answer", "option_scores", "paired", "query_metrics", "summarize",
           "token_f1"]
