"""Resumable, iteration-based data order for training, and rank shards for evaluation.

The training stream is a sequence of sample positions 0, 1, 2, ...; position s reads index
``perm_e[s % N]`` of a permutation drawn for epoch e = s // N from (seed, e), and runs the
dataset's random augmentation under RNG seeds derived from (seed, s). Iteration i of a global
batch G covers positions [i·G, (i+1)·G); rank r takes the r-th slice of it. So the data a run sees
depends only on (seed, iteration), not on workers, world size history or interruptions: resuming
at iteration i only needs i.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the augmentation of one stream position."""
    return (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 1) % (2 ** 63)


class IterationBatchSampler(Sampler):
    """Yields, for iterations start..stop-1, this rank's list of ``(index, augmentation seed)``."""

    def __init__(self, dataset_size: int, global_batch: int, rank: int, world_size: int, seed: int,
                 start_iteration: int, stop_iteration: int):
        if dataset_size < 1:
            raise ValueError("IterationBatchSampler: the training dataset is empty")
        if global_batch % world_size:
            raise ValueError(f"--batch-size {global_batch} is not divisible by the world size {world_size}")
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start = start_iteration
        self.stop = stop_iteration
        self._perm_epoch = -1
        self._perm = None

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _index(self, position: int) -> int:
        epoch = position // self.dataset_size
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = torch.randperm(self.dataset_size, generator=generator).tolist()
            self._perm_epoch = epoch
        return self._perm[position % self.dataset_size]

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            first = iteration * self.global_batch + self.rank * self.local_batch
            yield [(self._index(p), sample_seed(self.seed, p)) for p in range(first, first + self.local_batch)]


class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its augmentation under fixed RNG seeds.

    python ``random``, numpy's global RNG and torch's CPU RNG are seeded for the call and restored
    afterwards, so the caller's generators are untouched (this matters when workers=0).
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % (2 ** 32))
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def rank_shard(dataset_size: int, rank: int, world_size: int) -> list[int]:
    """Indices rank, rank + W, ... : every sample evaluated exactly once over all ranks."""
    return list(range(rank, dataset_size, world_size))
