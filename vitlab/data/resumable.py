"""A training loader that resumes mid-epoch exactly: same remaining batches, same augmentation.

Three parts, so that the data of step ``s`` is a function of (seed, epoch, position) only:

* :class:`SeededSampler` - a ``DistributedSampler`` (so Lightning keeps it under DDP) whose order is
  ``randperm`` seeded by ``seed + epoch``, and which can start an epoch part-way through.
* :class:`SeededDataset` - runs the wrapped data set's transform with torch, numpy and ``random`` seeded from
  (seed, epoch, index): augmentation no longer depends on which worker, or which process, draws it, nor on the
  global random state (which it leaves untouched in the main process).
* :class:`ResumableDataLoader` - a ``DataLoader`` with ``state_dict``/``load_state_dict`` (Lightning saves
  these into checkpoints) holding the epoch and the batches handed out so far. Lightning does not prefetch
  from a loader with a length, so batches handed out = batches trained on.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (a simple multiplicative hash; neighbours differ)."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) * 0x9E3779B97F4A7C15 % (2**63 - 1)


class SeededSampler(DistributedSampler):
    """Yields ``(index, epoch, seed)`` keys for :class:`SeededDataset`, shuffled by ``seed + epoch``.

    With ``repeats`` R > 1 it is DeiT's repeated augmentation, as timm's ``RepeatAugSampler`` draws it: each
    shuffled index is repeated R times in a row and the stream dealt out to the processes in turn, so the R copies
    land in R different processes (or side by side in one), each copy augmented differently (its key is
    ``(index * R + copy, epoch, seed)``-seeded); an epoch keeps ``len(dataset) / num_replicas`` samples per process.
    Written here rather than using timm's sampler because it must resume mid-epoch and seed each copy apart.

    Args:
        dataset: The data set (only its length is used).
        num_replicas: Processes sharing an epoch (DDP world size); each takes its own shard.
        rank: This process's shard.
        shuffle: Shuffle each epoch (False: in order).
        seed: Seed of the order and of the per-sample augmentation seeds.
        repeats: Augmented copies of each drawn sample (repeated augmentation); 1 = off.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, repeats: int = 1) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"repeated_aug must be an integer >= 1, got {repeats!r}")
        self.repeats = repeats
        self.start = 0  # samples of this epoch to skip (once), set when resuming

    def __iter__(self) -> Iterator[tuple[int, int, int] | tuple[int, int, int, int]]:
        start, self.start = self.start, 0
        epoch = self.epoch
        if self.repeats == 1:
            for index in list(super().__iter__())[start:]:
                yield index, epoch, self.seed
            return
        for index, copy in self._repeated()[start:]:
            yield index, epoch, self.seed, copy

    def _repeated(self) -> list[tuple[int, int]]:
        """This process's ``(index, copy)`` of the epoch: timm's RepeatAugSampler order."""
        n, R, world = len(self.dataset), self.repeats, self.num_replicas
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(n))
        stream = [(i, c) for i in order for c in range(R)]  # (n * R)
        total = math.ceil(n * R / world) * world
        stream += stream[:total - len(stream)]  # padded to divide evenly
        return stream[self.rank:total:world][:len(self)]

    def __len__(self) -> int:
        return super().__len__()


class SeededDataset(Dataset):
    """``dataset[index]`` computed under torch/numpy/``random`` seeded by ``sample_seed(seed, epoch, index)``.

    In the main process (``num_workers=0``) the global random states are restored after each batch; in a worker
    they are simply reseeded (nothing else there draws from them). Plain integer keys pass through unseeded.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list:
        """A batch of samples; in the main process the global states are saved and restored once per batch
        (numpy's get/set costs ~100 us, seeding ~15 us a sample)."""
        if get_worker_info() is not None:
            return [self._seeded(key) for key in keys]
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return [self._seeded(key) for key in keys]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def _seeded(self, key: int | tuple[int, ...]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch, seed = key[:3]
        s = sample_seed(seed, epoch, index if len(key) == 3 else -1 - (index * 1024 + key[3]))  # copies: own seeds
        torch.default_generator.manual_seed(s)  # not torch.manual_seed, which also seeds every GPU (~100 us)
        random.seed(s)
        np.random.seed(s % 2**32)
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # transform, classes, ... of the wrapped set
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over :class:`SeededDataset` and :class:`SeededSampler` that Lightning can checkpoint.

    ``state_dict()`` is ``{"epoch", "batches", "seed"}``: the epoch being iterated and the batches handed out
    in it. ``load_state_dict`` makes the next iteration of that epoch skip those batches; a finished epoch
    resumes at the start of the next one.

    Args:
        dataset: The (unwrapped) data set.
        batch_size: Samples per batch.
        sampler: Its :class:`SeededSampler`.
        **kwargs: Other ``DataLoader`` arguments (``drop_last``, ``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler: SeededSampler, **kwargs: Any) -> None:
        if not isinstance(dataset, SeededDataset):
            dataset = SeededDataset(dataset)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.batches = 0  # batches handed out in the current epoch

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # a generator: the body runs at the first next(), after Lightning's set_epoch
        self.batches = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self.batches), "seed": int(self.sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.seed = int(state["seed"])
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # the epoch was finished: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.start = batches * self.batch_size
        self.batches = batches


__all__ = ["ResumableDataLoader", "SeededDataset", "SeededSampler", "sample_seed"]
