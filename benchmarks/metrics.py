"""Speed and memory of the pixel metrics on a synthetic MVTec-sized category, against the literal reference.

Run: ``.venv/bin/python benchmarks/metrics.py``. Prints times, their ratio and peak memory, all measured
in this one run. The per-threshold reference costs (distinct scores x pixels), about 3e14 steps at full
size, so it is timed on a subsampled subset, against the fast metrics on that same subset.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from zsad.metrics import pixel_metrics
from zsad.metrics.reference import aupro_reference

N_IMAGES, SIZE, N_ANOMALOUS = 150, 336, 45
SUBSET_IMAGES, SUBSET_STRIDE = 8, 10


def synthetic_category(seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """float32 maps ``[N, S, S]`` of smooth noise plus a blurred copy of elliptic defects; bool masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((N_IMAGES, SIZE, SIZE), dtype=bool)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    for image in rng.choice(N_IMAGES, N_ANOMALOUS, replace=False):
        for _ in range(rng.integers(1, 3)):
            r0, c0 = rng.integers(40, SIZE - 40, size=2)
            a, b = rng.uniform(5, 60, size=2)
            masks[image] |= ((rows - r0) / a) ** 2 + ((cols - c0) / b) ** 2 <= 1
    noise = ndimage.gaussian_filter(rng.standard_normal(masks.shape, dtype=np.float32), sigma=(0, 4, 4))
    signal = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 6, 6))
    maps = noise / noise.std() + 2.0 * signal
    n_regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
    return maps.astype(np.float32), masks, n_regions


def best_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    maps, masks, n_regions = synthetic_category()
    print(f"category: {N_IMAGES} images {SIZE}x{SIZE} float32 ({maps.size:,} pixels, "
          f"{maps.nbytes / 2**20:.0f} MiB), {n_regions} regions, {masks.mean():.2%} anomalous pixels")
    metrics = pixel_metrics(maps, masks)
    print("  " + ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()))
    full = best_time(lambda: pixel_metrics(maps, masks), repeats=3)
    print(f"pixel_metrics (all four), full category: {full:.3f} s, "
          f"peak memory {peak_mib(lambda: pixel_metrics(maps, masks)):.0f} MiB beyond the inputs")
    argsort = best_time(lambda: np.argsort(maps.ravel(), kind="stable"), repeats=1)
    print(f"  for scale: arg-sorting all scores once (where one global sort would start) takes {argsort:.3f} s, "
          f"{argsort / full:.1f}x the whole of pixel_metrics")

    sub_maps = np.ascontiguousarray(maps[:SUBSET_IMAGES * 2 : 2, ::SUBSET_STRIDE, ::SUBSET_STRIDE])
    sub_masks = np.ascontiguousarray(masks[:SUBSET_IMAGES * 2 : 2, ::SUBSET_STRIDE, ::SUBSET_STRIDE])
    print(f"reference is too slow for the full category; subset: {SUBSET_IMAGES} images subsampled to "
          f"{sub_maps.shape[1]}x{sub_maps.shape[2]} ({sub_maps.size:,} pixels, "
          f"{len(np.unique(sub_maps)):,} distinct scores)")
    fast = pixel_metrics(sub_maps, sub_masks)["pixel_aupro"]
    slow = aupro_reference(sub_maps, sub_masks)
    print(f"  AUPRO fast {fast:.10f} vs reference {slow:.10f} (difference {abs(fast - slow):.1e})")
    fast_time = best_time(lambda: pixel_metrics(sub_maps, sub_masks), repeats=5)
    slow_time = best_time(lambda: aupro_reference(sub_maps, sub_masks), repeats=1)
    print(f"  pixel_metrics (all four) {fast_time * 1e3:.2f} ms, reference AUPRO alone {slow_time:.2f} s: "
          f"{slow_time / fast_time:,.0f}x faster; reference peak memory "
          f"{peak_mib(lambda: aupro_reference(sub_maps, sub_masks)):.1f} MiB")


if __name__ == "__main__":
    main()
