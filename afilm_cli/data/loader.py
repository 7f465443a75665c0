"""Lazy, shuffled, shardable batches over an HDF5 patch file (afilm_cli.data.h5.PatchFile).

Each batch reads only its own patches: from memory when the file was loaded (PatchFile.load, which
``afilm train`` does when the file fits in a quarter of the free memory, as the reference always
does), else from disk, so that memory stays one batch plus one index array (8 bytes per patch).

Order: epoch ``e`` visits ``numpy.random.default_rng([seed, e]).permutation(N)``, a pure function
of (seed, epoch). Nothing about the order has to be checkpointed, and a run resumed mid-epoch
regenerates the permutation and skips the batches it already did (``batches(epoch, start=k)``).

Distributed (torchrun): the permutation is padded by wrapping around to a multiple of the world
size, then rank ``i`` takes every ``world``-th index from ``i`` (as torch's DistributedSampler), so
every rank runs the same number of steps and the ranks' batches together form the batch a single
process with ``batch_size * world`` would see.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from afilm_cli.data.h5 import PatchFile


class PatchLoader:
    """Batches of (x, y) float32 tensors shaped (B, 1, patch): channels-first, as the models take."""

    def __init__(self, patches: PatchFile, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.patches = patches
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def indices(self, epoch: int = 0) -> np.ndarray:
        """This rank's patch indices for ``epoch``, in visiting order."""
        n = len(self.patches)
        if not self.shuffle:
            # evaluation: no padding (no patch counted twice); ranks may differ by one patch
            return np.arange(n)[self.rank :: self.world_size]
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        if self.world_size > 1:
            total = -(-n // self.world_size) * self.world_size
            order = np.resize(order, total)  # wraps around: equal step counts on every rank
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        """Batches per epoch (the last one may be partial, as in Keras' fit)."""
        return -(-len(self.indices(0)) // self.batch_size)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of ``epoch`` from batch number ``start`` on (earlier ones are not read)."""
        order = self.indices(epoch)
        contiguous = not self.shuffle and self.world_size == 1
        for b in range(start, -(-len(order) // self.batch_size)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, len(order))
            # h5py wants increasing indices; the order inside a batch does not matter to a mean loss
            index = slice(lo, hi) if contiguous else np.unique(order[lo:hi])
            if not contiguous and len(index) < hi - lo:  # a wrapped-around duplicate (tiny files only)
                index = np.sort(order[lo:hi])
                x, y = _read_with_repeats(self.patches, index)
            else:
                x, y = self.patches.read(index)
            yield torch.from_numpy(x)[:, None, :], torch.from_numpy(y)[:, None, :]


def _read_with_repeats(patches: PatchFile, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(index, return_inverse=True)
    x, y = patches.read(uniq)
    return x[inverse], y[inverse]
