"""The teacher's logits cached per image across epochs, where the augmentations allow it (DeiT's teacher is frozen,
so an image seen again gets the same logits).

An image is recognised by its content, not by its index (the loaders yield ``(x, y)`` only): two 64-bit hashes of
its float32 bits, computed on its device with integer arithmetic, so equal images give equal keys in any batch
and on any device. With random augmentations (crops, flips, mixup) an image is rarely met twice; the cache then
switches itself off after the second epoch (fewer than half of the images found) and says so, so it costs nothing
afterwards. Hand-written: neither timm nor Lightning caches a teacher's outputs.
"""
from __future__ import annotations

from typing import Callable

import torch
from lightning.pytorch.utilities import rank_zero_info

MIN_HIT_RATE = 0.5


class TeacherCache:
    """``lookup(x, compute)`` returns the teacher logits (B, K) of images ``x`` (B, C, H, W), computing only those
    not seen before.

    Args:
        max_bytes: The most memory the cached logits may take (they live on the images' device); beyond it new
            images are not cached.
    """

    def __init__(self, max_bytes: int = 2 * 2**30) -> None:
        self.max_bytes = max_bytes
        self.enabled = True
        self.store: dict[tuple[int, int], torch.Tensor] = {}
        self.epoch = 0
        self.hits = self.misses = 0  # this epoch
        self._mult: torch.Tensor | None = None  # (2, C*H*W) odd int64 multipliers

    def keys(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """Two 64-bit content hashes per image of ``x`` (B, C, H, W): sum of its float32 bits times fixed odd
        multipliers, in wrapping int64 arithmetic."""
        bits = x.detach().float().contiguous().view(torch.int32).flatten(1).long()  # (B, C*H*W)
        if self._mult is None or self._mult.shape[1] != bits.shape[1] or self._mult.device != bits.device:
            g = torch.Generator().manual_seed(0)
            mult = torch.randint(-2**62, 2**62, (2, bits.shape[1]), generator=g, dtype=torch.int64) | 1
            self._mult = mult.to(bits.device)
        h = torch.stack([(bits * m).sum(1) for m in self._mult], 1)  # (B, 2)
        return [tuple(row) for row in h.tolist()]

    def lookup(self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if not self.enabled:
            return compute(x)
        keys = self.keys(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if not missing:
            return torch.stack([self.store[k] for k in keys])  # (B, K)
        fresh = compute(x[missing]) if len(missing) < len(keys) else compute(x)  # (M, K)
        new = dict(zip(missing, fresh))
        out = fresh if len(missing) == len(keys) else torch.stack(
            [new[i] if i in new else self.store[k] for i, k in enumerate(keys)])  # (B, K)
        room = self.max_bytes // (fresh[0].numel() * fresh.element_size())
        for i in missing:
            if len(self.store) >= room:
                break
            self.store[keys[i]] = new[i].detach()
        return out

    def end_epoch(self) -> None:
        """After the second epoch, keep caching only if at least half the images were found."""
        self.epoch += 1
        seen = self.hits + self.misses
        if self.enabled and self.epoch >= 2 and seen and self.hits / seen < MIN_HIT_RATE:
            rank_zero_info(f"distill: teacher logits are not cached: the augmentations changed {self.misses} of "
                           f"{seen} images in epoch {self.epoch} (cached logits would be stale); the teacher runs on "
                           f"every batch")
            self.enabled = False
            self.store.clear()
        self.hits = self.misses = 0


__all__ = ["TeacherCache"]
