"""Helpers of the multi-process CPU tests: a free port, and a gloo process group for one spawned rank."""

import contextlib
import os
import socket

import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank: int, world: int, port: int):
    """Join a gloo process group on localhost for the duration of the block."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()  # every rank done communicating before any tears its group down (a race aborted one rank once)
    finally:
        dist.destroy_process_group()
