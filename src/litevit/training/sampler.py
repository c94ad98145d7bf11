"""The multi-scale variable-batch sampler of the MobileViT v1 recipe.

Mehta, Rastegari. "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision Transformer", ICLR 2022,
arXiv:2110.02178, Sec. 4 ("multi-scale sampler"); reference implementation: apple/ml-cvnets
``data/sampler/variable_batch_sampler.py``. Every batch is drawn at one image size from a short list, and its batch
size is scaled so that the number of pixels per batch stays that of the base size and base batch size.

Differences from cvnets: one size list (square sizes; cvnets draws height and width separately from the same list),
the schedule of sizes and the shuffle come from a NumPy generator seeded with ``(seed, epoch)`` only, so that every
rank of a distributed run sees the same sequence of sizes and batch sizes (and therefore the same number of steps),
and the per-rank shards are padded to equal length like ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ..layers import make_divisible


def multi_scale_sizes(
    base_size: int, min_size: int, max_size: int, num_scales: int = 5, divisor: int = 32
) -> tuple[int, ...]:
    """``num_scales`` sizes evenly spaced in ``[min_size, max_size]``, rounded to multiples of ``divisor``.

    The base size is always included. cvnets' defaults for MobileViT at 256: ``(160, 192, 256, 288, 320)``.
    """
    if not 0 < min_size <= base_size <= max_size:
        raise ValueError(f"expected 0 < min_size <= base_size <= max_size, got {min_size}, {base_size}, {max_size}")
    if num_scales < 1:
        raise ValueError(f"num_scales must be at least 1, got {num_scales}")
    sizes = {make_divisible(float(s), divisor) for s in np.linspace(min_size, max_size, num_scales)}
    sizes.add(base_size)
    return tuple(sorted(sizes))


class MultiScaleBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches of ``(image_size, dataset_index)`` pairs: one size per batch, pixels per batch constant.

    ``batch_size`` is the batch at ``img_size``; a batch at size ``s`` holds ``max(1, int(batch_size * img_size**2 /
    s**2))`` images. With ``sizes=None`` (or only ``img_size``) it is a plain fixed-size batch sampler.

    The order is deterministic per ``(seed, epoch)`` (call :meth:`set_epoch` before each epoch). Under data-parallel
    training each of ``num_replicas`` ranks gets the shard ``indices[rank::num_replicas]`` of the shuffled indices,
    padded by wrapping around so that all shards have equal length and all ranks take the same number of steps.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        img_size: int,
        sizes: Sequence[int] | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"the dataset is empty (num_samples={num_samples})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        sizes = tuple(sorted(set(sizes))) if sizes else (img_size,)
        if min(sizes) < 1:
            raise ValueError(f"image sizes must be positive, got {sizes}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.img_size = img_size
        self.sizes = sizes
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0

    def batch_size_for(self, size: int) -> int:
        """Images in a batch at ``size``: the base batch scaled by ``(img_size / size) ** 2``, at least 1."""
        return max(1, int(self.batch_size * self.img_size**2 / size**2))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        per_rank = -(-self.num_samples // self.num_replicas)  # ceil
        padded = np.resize(order, per_rank * self.num_replicas)  # wraps around to pad
        shard = padded[self.rank :: self.num_replicas].tolist()
        batches = []
        start = 0
        while start < len(shard):
            # drawn from the shared generator, so every rank gets the same sizes and batch sizes
            size = int(self.sizes[rng.integers(len(self.sizes))]) if len(self.sizes) > 1 else self.sizes[0]
            count = self.batch_size_for(size)
            chunk = shard[start : start + count]
            start += count
            if self.drop_last and len(chunk) < count:
                break
            batches.append([(size, index) for index in chunk])
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        yield from self._plan()

    def __len__(self) -> int:
        return len(self._plan())

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "sizes": list(self.sizes), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
