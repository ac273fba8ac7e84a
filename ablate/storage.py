"""How the preprocessed cache stores arrays: chunked blosc2 files, as nnU-Net v2 stores them.

`save_array(folder, name, array, patch_size)` writes `<name>.b2nd` (LZ4HC level 5, the smaller of
no filter and byte shuffle on a central chunk, blocks and chunks from nnU-Net's
`comp_blosc2_params` for the plan's patch), as nnU-Net's `nnUNetDatasetBlosc2.save_case` does;
`open_array(folder, name)` opens it memory-mapped, so slicing decompresses only the chunks a
patch touches and returns a numpy array. A cache written before (`<name>.npy`, uncompressed)
opens as a numpy memmap, so old caches keep working unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import blosc2
import numpy as np

MAX_BLOCK_BYTES = 128 * 1024  # nnU-Net's comp_blosc2_params defaults
MAX_CHUNK_BYTES = 6 * 1024**2
MAX_CHUNK_TO_PATCH = 1.5
CLEVEL = 5
CODEC = blosc2.Codec.LZ4HC


def _pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pow2_below(n: int) -> int:
    return 1 if n <= 1 else 1 << ((n - 1).bit_length() - 1)


def chunk_params(shape, patch_size, itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(blocks, chunks) of a (C, Z, Y, X) or (Z, Y, X) array: nnU-Net v2's comp_blosc2_params
    (blocks: the patch rounded up to powers of two, halved on the most over-represented axis
    until 128 KiB; chunks: grown block by block on the least covered axis up to 1.5 patches per
    axis and 6 MiB), channel axis 1."""
    spatial, patch = [int(s) for s in shape[-3:]], [int(p) for p in patch_size]
    target = [
        max(1, min(s, math.floor(MAX_CHUNK_TO_PATCH * p)))
        for s, p in zip(spatial, patch, strict=True)
    ]
    nbytes = lambda b: math.prod(b) * itemsize  # noqa: E731
    block = [min(_pow2_ceil(p), s) for p, s in zip(patch, spatial, strict=True)]
    while nbytes(block) > min(MAX_BLOCK_BYTES, MAX_CHUNK_BYTES):
        axes = [a for a in range(3) if block[a] > 1]
        axis = max(axes, key=lambda a: (block[a] / target[a], a))
        block[axis] = _pow2_below(block[axis])
    chunk = list(block)
    while True:
        options = []
        for a in range(3):
            if patch[a] == 1 or chunk[a] >= spatial[a] or chunk[a] >= target[a]:
                continue
            grown = list(chunk)
            grown[a] = min(chunk[a] + block[a], spatial[a], target[a])
            if grown[a] != chunk[a] and nbytes(grown) <= MAX_CHUNK_BYTES:
                options.append((chunk[a] / target[a], -spatial[a], a, -nbytes(grown), grown))
        if not options:
            break
        chunk = min(options, key=lambda o: o[:4])[4]
    lead = (1,) * (len(shape) - 3)
    return (*lead, *block), (*lead, *chunk)


def _smaller_filter(array: np.ndarray, blocks, chunks) -> blosc2.Filter:
    """nnU-Net's _select_filter: no filter or shuffle, whichever compresses a central chunk
    smaller (resampled intensities favour shuffle, quantised ones no filter); ties: none."""
    slab_shape = [min(c, s) for c, s in zip(chunks, array.shape, strict=True)]
    centre = tuple(
        slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(array.shape, slab_shape, strict=True)
    )
    slab = np.ascontiguousarray(array[centre])
    trial_blocks = tuple(max(1, min(b, n)) for b, n in zip(blocks, slab_shape, strict=True))
    best, best_bytes = blosc2.Filter.NOFILTER, None
    for candidate in (blosc2.Filter.NOFILTER, blosc2.Filter.SHUFFLE):
        cparams = {"codec": CODEC, "clevel": CLEVEL, "nthreads": 1, "filters": [candidate]}
        size = blosc2.asarray(
            slab, chunks=tuple(slab_shape), blocks=trial_blocks, cparams=cparams
        ).schunk.cbytes
        if best_bytes is None or size < best_bytes:
            best, best_bytes = candidate, size
    return best


def save_array(folder: Path, name: str, array: np.ndarray, patch_size) -> Path:
    """Write `<folder>/<name>.b2nd`, chunked for patches of `patch_size` (the last 3 axes)."""
    array = np.ascontiguousarray(array)
    blocks, chunks = chunk_params(array.shape, patch_size, array.itemsize)
    cparams = {
        "codec": CODEC,
        "clevel": CLEVEL,
        "nthreads": 1,
        "filters": [_smaller_filter(array, blocks, chunks)],
    }
    path = Path(folder) / f"{name}.b2nd"
    blosc2.asarray(
        array, urlpath=str(path), chunks=chunks, blocks=blocks, cparams=cparams, mode="w"
    )
    return path


def open_array(folder: Path, name: str):
    """`<name>.b2nd` memory-mapped (slices decompress only their chunks), else the uncompressed
    `<name>.npy` of an older cache as a numpy memmap."""
    path = Path(folder) / f"{name}.b2nd"
    if path.is_file():
        return blosc2.open(str(path), mode="r", mmap_mode="r", dparams={"nthreads": 1})
    return np.load(Path(folder) / f"{name}.npy", mmap_mode="r")
