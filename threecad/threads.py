"""CPU thread settings that a method's own code needs, kept below the methods and the harness.

A method must not import the harness; the few thread rules a method applies inside its
own fit live here.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def single_thread_on_cpu(device: torch.device):
    """One CPU thread for a loop of small memory-bound steps (coreset selection, many small
    factorisations): with several, each step pays a thread hand-off, which costs more than
    the step itself, and more still on a busy machine."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
