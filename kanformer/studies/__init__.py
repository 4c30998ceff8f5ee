"""Experiments built from training runs: FFN comparisons (``compare``), scaling sweeps (``sweep``) with their fits
(``scaling``) and plots (``plots``), and the KAN paper's toy experiments (``toy``)."""
