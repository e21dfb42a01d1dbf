"""Splitting work into batches without the results depending on the split.

`chunks` cuts a range into consecutive slices (bounded memory per forward pass);
`sample_generator` gives each sample its own random stream, seeded from (seed, sample id, use)
alone, so a sample draws the same numbers whichever batch, process or resume point runs it.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def chunks(total: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `chunk_size` covering range(total)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for start in range(0, total, chunk_size):
        yield slice(start, min(start + chunk_size, total))


def sample_generator(seed: int, sample_id: int, stream: str, device: torch.device | str = "cpu"
                     ) -> torch.Generator:
    """A torch.Generator on `device` seeded from (seed, sample_id, stream) alone.

    `stream` separates independent uses of one sample ("init_noise", "widths/3", ...).
    """
    stream_key = [int(b) for b in stream.encode()]
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(sample_id) & 0xFFFFFFFF, *stream_key])
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))
    return generator


def image_chunk(chunk_size: int, image_numel: int, budget: int = 1 << 24) -> int:
    """How many images of `image_numel` values to build and evaluate at once: `chunk_size`, or
    fewer so that a chunk holds at most `budget` values (1 << 24: 64 MB of float32, 111 images
    of 3x224x224, the whole 512 of 32x32), so that memory does not grow with the image size."""
    return max(1, min(chunk_size, budget // max(1, image_numel)))
