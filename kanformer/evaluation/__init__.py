"""Measuring models: metrics and cost (``metrics``), a checkpoint on its run's validation data (``validation``), on
any dataset (``datasets``), and on lm-evaluation-harness tasks (``harness``)."""

from .metrics import (
    bits_per_byte,
    classification_metrics,
    lm_nll,
    measure_inference,
    measure_training,
    memory_stats,
    param_counts,
    perplexity,
    saved_activation_bytes,
    sliding_windows,
)

__all__ = ["bits_per_byte", "classification_metrics", "lm_nll", "measure_inference", "measure_training",
           "memory_stats", "param_counts", "perplexity", "saved_activation_bytes", "sliding_windows"]
