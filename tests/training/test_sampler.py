"""The multi-scale variable-batch sampler (MobileViT v1 recipe): sizes, batch scaling, determinism, sharding."""

from __future__ import annotations

import itertools

import pytest

from litevit.training.sampler import MultiScaleBatchSampler, multi_scale_sizes


def _expected_batch(base_batch: int, base_size: int, size: int) -> int:
    # pixels per batch kept at base_batch * base_size**2, rounded down, at least one image
    return max(1, (base_batch * base_size * base_size) // (size * size))


def test_sizes_follow_the_cvnets_rule() -> None:
    # linspace(160, 320, 5) = 160, 200, 240, 280, 320, each rounded to the nearest multiple of 32
    assert multi_scale_sizes(256, 160, 320, 5) == (160, 192, 256, 288, 320)
    # the base size is always present, even when the spacing skips it
    assert 224 in multi_scale_sizes(224, 128, 320, 3)
    with pytest.raises(ValueError, match="min_size <= base_size <= max_size"):
        multi_scale_sizes(256, 300, 320)


def test_one_size_per_batch_and_pixels_per_batch_constant() -> None:
    sizes = (160, 192, 256, 288, 320)
    sampler = MultiScaleBatchSampler(1000, 32, 256, sizes, seed=3)
    seen_sizes = set()
    batches = list(sampler)
    for position, batch in enumerate(batches):
        batch_sizes = {size for size, _ in batch}
        assert len(batch_sizes) == 1
        (size,) = batch_sizes
        seen_sizes.add(size)
        if position < len(batches) - 1:  # the last batch holds what is left
            assert len(batch) == _expected_batch(32, 256, size)
        assert len(batch) * size * size <= 32 * 256 * 256
    assert seen_sizes == set(sizes)  # 1000 images in batches of >= 20: every size drawn at least once
    # the published scaling: 160 -> 81 images, 320 -> 20 at a base of 32 images at 256
    assert sampler.batch_size_for(160) == 81 and sampler.batch_size_for(320) == 20


def test_epoch_covers_the_dataset_once() -> None:
    sampler = MultiScaleBatchSampler(103, 8, 64, (48, 64, 80), seed=1)
    indices = [i for batch in sampler for _, i in batch]
    assert sorted(indices) == list(range(103))
    assert len(sampler) == len(list(sampler))


def test_deterministic_per_seed_and_epoch() -> None:
    def plan(seed: int, epoch: int) -> list[list[tuple[int, int]]]:
        sampler = MultiScaleBatchSampler(200, 8, 64, (48, 64, 80), seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert plan(0, 5) == plan(0, 5)
    assert plan(0, 5) != plan(0, 6)
    assert plan(0, 5) != plan(1, 5)
    # a fresh sampler restored from a state dict replays the same epoch
    sampler = MultiScaleBatchSampler(200, 8, 64, (48, 64, 80), seed=7)
    sampler.set_epoch(3)
    restored = MultiScaleBatchSampler(200, 8, 64, (48, 64, 80), seed=0)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == list(sampler)


@pytest.mark.parametrize("num_samples", [96, 101])
def test_shards_are_disjoint_and_cover_the_dataset(num_samples: int) -> None:
    world = 4
    shards = []
    for rank in range(world):
        sampler = MultiScaleBatchSampler(num_samples, 6, 64, (48, 64, 96), seed=2, num_replicas=world, rank=rank)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    # every rank takes the same number of steps with the same size at each step (DDP needs both)
    assert len({len(s) for s in shards}) == 1
    for step in zip(*shards, strict=True):
        assert len({batch[0][0] for batch in step}) == 1
        assert len({len(batch) for batch in step}) == 1
    per_rank = [[i for batch in shard for _, i in batch] for shard in shards]
    union = [i for indices in per_rank for i in indices]
    assert set(union) == set(range(num_samples))
    padding = -num_samples % world
    assert len(union) == num_samples + padding  # duplicates only where padding was needed
    if padding == 0:
        for a, b in itertools.combinations(per_rank, 2):
            assert not set(a) & set(b)


def test_fixed_size_mode_and_drop_last() -> None:
    sampler = MultiScaleBatchSampler(50, 8, 224, shuffle=False)
    batches = list(sampler)
    assert [len(b) for b in batches] == [8] * 6 + [2]
    assert {size for b in batches for size, _ in b} == {224}
    assert [i for b in batches for _, i in b] == list(range(50))
    dropped = MultiScaleBatchSampler(50, 8, 224, shuffle=False, drop_last=True)
    assert [len(b) for b in dropped] == [8] * 6


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="empty"):
        MultiScaleBatchSampler(0, 8, 64)
    with pytest.raises(ValueError, match="rank"):
        MultiScaleBatchSampler(10, 8, 64, num_replicas=2, rank=2)
