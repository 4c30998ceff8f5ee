"""Changing a model's FFNs: ``kanify`` (``swap``: replace the FFNs of a Hugging Face model), warm starts fitted to
the FFN being replaced (``warmstart``), and conversion of pretrained checkpoints (``pretrained``: ``kanformer
kanify``)."""

from .swap import KanifyReport, kanify

__all__ = ["KanifyReport", "kanify"]
