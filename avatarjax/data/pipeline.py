"""Grain pipelines shared by every system: deterministic, resumable, split across processes.

A global batch ``i`` is the records at positions ``[i*B, (i+1)*B)`` of a seeded shuffle of the source, repeated
epoch after epoch. Process ``p`` of ``P`` reads only rows ``[p*B/P, (p+1)*B/P)`` of each global batch, which is
exactly the rows its devices hold under the ``batch`` sharding, so 1 process and N processes see the same global
batches. Shuffling and batching happen on indices, so only the rows a process needs are ever loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np


def stack_records(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {key: np.stack([np.asarray(r[key]) for r in records]) for key in records[0]}


def batched(source: Any, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
            process_index: int = 0, process_count: int = 1,
            transform: Callable[[Any, np.random.Generator], Any] | None = None,
            collate: Callable[[Sequence[Any]], Any] = stack_records) -> grain.MapDataset:
    """A map dataset of this process's share of each global batch.

    ``source`` supports ``len`` and ``__getitem__`` (a grain RandomAccessDataSource). ``transform(record, rng)``
    runs per record with a generator seeded by (seed, global batch index, row in the global batch), so random
    crops and instruction sampling are identical on 1 or N processes and after a resume. Partial final batches
    are dropped; with ``num_epochs=None`` it repeats forever.
    """
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} must divide by the process count {process_count}")
    if len(source) < batch_size:
        raise ValueError(f"the dataset has {len(source)} records, fewer than one batch of {batch_size}")
    local = batch_size // process_count
    indices = grain.MapDataset.range(len(source))
    if shuffle:
        indices = indices.shuffle(seed=seed)
    indices = indices.repeat(num_epochs)
    global_batches = indices.batch(batch_size, drop_remainder=True)
    start = process_index * local

    def load(batch_index, batch_indices):
        rows = np.asarray(batch_indices)[start:start + local]
        records = []
        for row, i in enumerate(rows):
            record = source[int(i)]
            if transform is not None:
                record = transform(record, np.random.default_rng([seed, batch_index, start + row]))
            records.append(record)
        return collate(records)

    return global_batches.map_with_index(load)


def to_iter(ds: grain.MapDataset | grain.IterDataset, *, threads: int = 2, prefetch: int = 4) -> grain.IterDataset:
    """An iterable dataset with bounded read-ahead: ``threads`` loader threads and ``prefetch`` elements (here,
    batches) in flight. grain's defaults (16 threads, 500 elements) would hold hundreds of batches of video."""
    if isinstance(ds, grain.IterDataset):
        return ds
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))


def clip_windows(source: Any, make_example: Callable[[Any, np.random.Generator | None], Any], *, split: str,
                 batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                 num_epochs: int | None = None, threads: int = 2, prefetch: int = 4) -> grain.IterDataset:
    """Batches of windows cut from clip records: the train split shuffles, repeats and passes ``make_example`` a
    generator (random crops); other splits read one pass in order and pass None (centred windows)."""
    train = split == "train"
    ds = batched(source, batch_size=batch_size, seed=seed, shuffle=train,
                 num_epochs=num_epochs if num_epochs is not None or train else 1,
                 process_index=process_index, process_count=process_count,
                 transform=lambda record, rng: make_example(record, rng if train else None))
    return to_iter(ds, threads=threads, prefetch=prefetch)
