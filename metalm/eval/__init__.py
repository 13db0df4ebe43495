"""Few-shot evaluation: adapt then score, for every method on the same held-out episodes."""

from .fewshot import METHODS, EvalConfig, Harness, eval_tasks, format_table, mean_ci95
from .scoring import exact_match, greedy_generate, normalize_answer, option_scores, token_f1

__all__ = ["METHODS", "EvalConfig", "Harness", "eval_tasks", "exact_match", "format_table", "greedy_generate",
           "mean_ci95", "normalize_answer", "option_scores", "token_f1"]
