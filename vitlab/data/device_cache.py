"""A loader that keeps a small uint8 data set (Fashion-MNIST, CIFAR) on the training device and augments there.

With the whole set in GPU memory (CIFAR-10 train is 150 MB as uint8) a batch is an index into it plus a few batched
tensor ops - random crop with zero padding, horizontal flip, timm's RandAugment (per sample, in
:mod:`vitlab.data.batched_augment`), channel conversion, resize (and the eval centre crop), normalisation - so no
worker process or host-to-device copy can starve the GPU. The result matches ``small_image_transform`` (same steps,
same order); only the random numbers differ.

Shuffling is seeded and changes every epoch; under DDP each rank takes its own shard of the same permutation
(padded to equal length, as ``DistributedSampler``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from vitlab.data.batched_augment import BatchedRandAugment
from vitlab.data.resumable import sample_seed

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class DeviceOrder:
    """The sample order of a :class:`DeviceCachedLoader`, in the role of its sampler: Lightning calls
    ``set_epoch`` on a loader's ``sampler`` at every epoch, and a resumed epoch starts ``start`` batches in."""

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int, world_size: int) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.shard_size = math.ceil(n / world_size)
        self.epoch = 0
        self.start = 0  # batches of this epoch to skip (once), set when resuming

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (same permutation on every rank, padded to equal shards)."""
        n = self.n
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(n)
        total = self.shard_size * self.world_size
        if total > n:  # repeat the first samples so every rank gets the same count
            order = torch.cat([order, order[: total - n]])
        return order[self.rank::self.world_size]


class DeviceCachedLoader:
    """Batches ``(images (B, C, H, W) float32, labels (B,) int64)`` made on ``device`` from uint8 images held there.

    Iterating once is one epoch; each new iteration moves to the next epoch (or use :meth:`set_epoch`, as
    Lightning does through :attr:`sampler`). The data of a batch depends only on (seed, epoch, rank, batch
    index), so same seed, same epoch -> same batches, and ``state_dict``/``load_state_dict`` (which Lightning
    stores in checkpoints) resume mid-epoch exactly.

    Args:
        images: ``(N, C, H, W)`` uint8 (or ``(N, H, W)`` for one channel).
        labels: ``(N,)`` integer labels.
        batch_size: Samples per batch, per process.
        mean: Per-channel normalisation mean (of the output channels), in [0, 1] units.
        std: Per-channel normalisation std.
        train: Shuffle and augment (random crop + flip); False keeps the order and only converts.
        pad: Zero padding of the random crop; 0 = no crop.
        flip: Random horizontal flip (train only).
        auto_augment: timm's RandAugment string (``rand-m9-mstd0.5-inc1``, ``rand-n1-m10-mstd101``), applied per
            sample after the crop and flip, as the per-image path (train only; see
            :class:`~vitlab.data.batched_augment.BatchedRandAugment`); None = off.
        native_mean: Mean of the stored channels, in [0, 1]: the fill colour of auto_augment's geometric ops (as
            ``small_image_transform``); None: timm's gray 128.
        erase: Random-erasing probability per training image (timm's ``RandomErasing`` in its "pixel" mode,
            batched: a rectangle of 2-33 % of the area, aspect 0.3-3.3, filled with normal noise after
            normalisation); 0 = off.
        device: Where the set lives and batches are made; default the current CUDA device, else CPU.
        seed: Seed of the shuffling and the augmentation.
        img_size: Output side (antialiased resize after augmentation); None keeps the stored size.
        interpolation: Resize mode: "nearest", "bilinear" or "bicubic" (timm's names).
        crop_pct: Eval only: resize to ``img_size / crop_pct`` and keep the centre ``img_size``, as timm's eval
            transform; 1 = resize straight to ``img_size``.
        in_chans: Output channels (gray <-> RGB as torchvision does); None keeps the stored channels.
        drop_last: Drop a ragged last batch; default: when training and the shard holds more than one batch.
        rank: This process's rank; default from ``torch.distributed`` when initialised, else 0.
        world_size: Number of processes; default from ``torch.distributed`` when initialised, else 1.
    """

    batch_sampler = None  # what Lightning looks for on a loader, beside ``sampler``

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], *, train: bool, pad: int = 4, flip: bool = True, erase: float = 0.0,
                 auto_augment: str | None = None, native_mean: Sequence[float] | None = None,
                 device: str | torch.device | None = None, seed: int = 0, img_size: int | None = None,
                 in_chans: int | None = None, interpolation: str = "bilinear", crop_pct: float = 1.0,
                 drop_last: bool | None = None, rank: int | None = None, world_size: int | None = None) -> None:
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        if len(labels) == 0:
            raise ValueError("the data set is empty: no images to load")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        d_rank, d_world = _dist_rank_world()
        rank = d_rank if rank is None else rank
        world_size = d_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.device = torch.device(device) if device is not None else _default_device()
        self.images = images.to(self.device)  # (N, C, H, W) uint8, once
        self.labels = labels.to(self.device, torch.int64)
        if isinstance(erase, bool) or not isinstance(erase, (int, float)) or not 0 <= erase <= 1:
            raise ValueError(f"erase must be a probability in [0, 1], got {erase!r}")
        self.batch_size, self.train, self.pad, self.flip, self.erase = batch_size, train, pad, flip, float(erase)
        if native_mean is not None and len(native_mean) not in (1, images.shape[1]):
            raise ValueError(f"native_mean needs {images.shape[1]} values (one per stored channel), got {native_mean}")
        self.auto_augment = BatchedRandAugment(auto_augment, fill=native_mean,
                                               translate_const=int(images.shape[-1] * 0.45)) if auto_augment else None
        if interpolation not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'nearest', 'bilinear' or 'bicubic', got {interpolation!r}")
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
        self.in_chans = in_chans or images.shape[1]
        self.img_size = img_size
        self.interpolation, self.crop_pct = interpolation, float(crop_pct)
        out_c = self.in_chans
        if len(mean) != out_c or len(std) != out_c:
            raise ValueError(f"mean and std need {out_c} values (one per output channel), got {mean} and {std}")
        self.mean = torch.tensor(mean, device=self.device, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device, dtype=torch.float32).view(1, -1, 1, 1)
        self.sampler = DeviceOrder(len(self.labels), shuffle=train, seed=seed, rank=rank, world_size=world_size)
        self.drop_last = (train and self.shard_size > batch_size) if drop_last is None else drop_last
        self.epoch = 0  # the epoch being (or last) iterated
        self.batches = 0  # batches handed out in it

    @classmethod
    def from_dataset(cls, dataset, batch_size: int, mean: Sequence[float], std: Sequence[float], **kwargs
                     ) -> "DeviceCachedLoader":
        """From a ``vitlab.data.in_memory.TensorImageDataset`` (its ``images``, ``labels``, ``indices``)."""
        idx = dataset.indices
        return cls(dataset.images[idx], dataset.labels[idx], batch_size, mean, std, **kwargs)

    @property
    def shard_size(self) -> int:
        """Samples this rank sees per epoch."""
        return self.sampler.shard_size

    @property
    def rank(self) -> int:
        return self.sampler.rank

    @property
    def world_size(self) -> int:
        return self.sampler.world_size

    def __len__(self) -> int:
        n = self.shard_size
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle and augmentation of ``epoch`` on the next iteration."""
        self.sampler.set_epoch(epoch)

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch``."""
        return self.sampler.shard_indices(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a generator: the body runs at the first next(), after Lightning's set_epoch
        order = self.sampler
        epoch, first = order.epoch, order.start
        order.epoch, order.start = epoch + 1, 0  # a plain re-iteration is the next epoch
        idx = order.shard_indices(epoch).to(self.device)
        g = torch.Generator(device=self.device)
        self.epoch, self.batches = epoch, first
        for b in range(first, len(self)):
            batch = idx[b * self.batch_size:(b + 1) * self.batch_size]
            g.manual_seed(sample_seed(order.seed + 7_919 * order.rank, epoch, b))
            self.batches = b + 1
            yield self.transform(self.images[batch], g), self.labels[batch]

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches", "seed"}``: the epoch being iterated and the batches handed out in it."""
        return {"epoch": int(self.epoch), "batches": int(self.batches), "seed": int(self.sampler.seed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next iteration continue where ``state`` was taken (a finished epoch: the next one)."""
        self.sampler.seed = int(state["seed"])
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.start = batches
        self.epoch, self.batches = epoch, batches

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> augmented (when training), converted, normalised float32 images."""
        if self.train:
            x = self._augment(x, generator)
        x = x.float().div_(255)  # (B, C, H, W) in [0, 1]
        if x.shape[1] != self.in_chans:
            if self.in_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                w = torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)
                x = (x * w).sum(dim=1, keepdim=True)
        size = self.img_size or x.shape[-1]
        if not self.train and self.crop_pct < 1:  # timm's eval crop: resize larger, keep the centre
            x = self._resize(x, math.floor(size / self.crop_pct))
            top = int(round((x.shape[-1] - size) / 2.0))  # as torchvision's CenterCrop
            x = x[..., top:top + size, top:top + size]  # (B, C, size, size)
        elif x.shape[-1] != size:
            x = self._resize(x, size)
        x = (x - self.mean) / self.std
        if self.train and self.erase > 0:
            x = self._random_erase(x, generator)
        return x

    def _resize(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, side, side), antialiased where the mode allows it (as torchvision's Resize)."""
        smooth = self.interpolation != "nearest"
        return F.interpolate(x, size=(side, side), mode=self.interpolation, antialias=smooth,
                             align_corners=False if smooth else None)

    def _augment(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        B, C, H, W = x.shape
        dev = x.device
        if self.pad > 0:  # random crop of the zero-padded image: gather each sample's window
            p = self.pad
            xp = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
            oy = torch.randint(0, 2 * p + 1, (B,), device=dev, generator=g)
            ox = torch.randint(0, 2 * p + 1, (B,), device=dev, generator=g)
            rows = (oy[:, None] + torch.arange(H, device=dev))[:, :, None]  # (B, H, 1)
            cols = (ox[:, None] + torch.arange(W, device=dev))[:, None, :]  # (B, 1, W)
            b = torch.arange(B, device=dev)[:, None, None]
            x = xp.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.flip:
            flip = torch.rand(B, device=dev, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.auto_augment is not None:
            x = self.auto_augment(x, g)  # (B, C, H, W) uint8, each sample its own ops
        return x

    def _random_erase(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """timm's RandomErasing (mode "pixel", scale 0.02-1/3, log-uniform aspect 0.3-3.3) for a whole batch
        at once; a rectangle that would not fit is clipped to the image instead of redrawn."""
        B, C, H, W = x.shape
        dev = x.device
        area = H * W * torch.empty(B, device=dev).uniform_(0.02, 1 / 3, generator=g)  # (B,)
        aspect = torch.empty(B, device=dev).uniform_(math.log(0.3), math.log(1 / 0.3), generator=g).exp()
        h = (area * aspect).sqrt().round().clamp(1, H)  # (B,)
        w = (area / aspect).sqrt().round().clamp(1, W)
        top = (torch.rand(B, device=dev, generator=g) * (H - h + 1)).floor()
        left = (torch.rand(B, device=dev, generator=g) * (W - w + 1)).floor()
        on = torch.rand(B, device=dev, generator=g) < self.erase
        ys = torch.arange(H, device=dev)[None, :]  # (1, H)
        xs = torch.arange(W, device=dev)[None, :]
        in_y = (ys >= top[:, None]) & (ys < (top + h)[:, None])  # (B, H)
        in_x = (xs >= left[:, None]) & (xs < (left + w)[:, None])  # (B, W)
        mask = (in_y[:, :, None] & in_x[:, None, :] & on[:, None, None])[:, None]  # (B, 1, H, W)
        noise = torch.randn(x.shape, device=dev, dtype=x.dtype, generator=g)  # (B, C, H, W)
        return torch.where(mask, noise, x)


__all__ = ["DeviceCachedLoader", "DeviceOrder"]
