"""Diagnostics of the problem metalm addresses: objective conflict and uneven generalization
(:mod:`~metalm.diagnostics.measures`), and the recipe ``metalm diagnose`` runs (:func:`diagnose`)."""

from .measures import (
    LOSSES,
    Objective,
    against_noise_floor,
    conflict_batches,
    cosine_matrix,
    decision_objective,
    floor_table,
    generalization_gap,
    gradient_conflict,
    plot_conflict,
    plot_gap,
    split_half,
    spread,
    task_gradient,
    token_objective,
)
from .recipe import diagnose

__all__ = ["LOSSES", "Objective", "against_noise_floor", "conflict_batches", "cosine_matrix", "decision_objective",
           "diagnose", "floor_table", "generalization_gap", "gradient_conflict", "plot_conflict", "plot_gap",
           "split_half", "spread", "task_gradient", "token_objective"]
