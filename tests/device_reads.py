"""Counting, on a CPU, what would wait on a GPU for its queue to drain."""

import torch


class DeviceReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor's value by the host (the operator behind ``.item()``, ``float``, ``bool``, and, once
    ``watch``-ed, calls of ``tolist`` and ``numpy``, which read a CPU tensor's memory without an operator) and tensors
    of host data made on the device (``torch.tensor`` of a list or an array: on a GPU a copy from pageable memory,
    which synchronises; a Python scalar written into a slice is a fill, not counted). Under this mode compiled
    functions run as the eager code they compile."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def watch(self, monkeypatch):
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)

            def counted(t, *args, _original=original, **kwargs):
                self.reads += 1
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, counted)
        return self

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        self.reads += func is torch.ops.aten.lift_fresh.default and args[0].numel() > 0 and args[0].dim() > 0
        return func(*args, **(kwargs or {}))
