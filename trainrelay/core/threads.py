"""Torch's CPU thread count from a Snakemake rule's ``threads`` (the cores budget of the job)."""

from __future__ import annotations

import torch


def set_threads(threads: int | None) -> None:
    """Use the rule's ``threads`` for torch on the CPU (Snakemake's cores budget)."""
    if threads:
        torch.set_num_threads(int(threads))
