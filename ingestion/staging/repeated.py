"""Keys seen earlier in a file, tracked in a fixed 16 MB bit set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class RepeatedKeys:
    """Finds, as the file streams by, the rows whose key an earlier row already carried.

    Only those rows can lose to an earlier one under the duplicate rule (decided in SQL, see
    ``STAGE_DUPLICATES``), so only they need their original values staged for the
    rejected-row report; the file is then not read a second time for them. Keys are kept as
    one bit per hash, 16 MB however long the file: a hash collision only makes a row a
    candidate that SQL then finds unique, and a real repeat is never missed.
    """

    BITS = 1 << 27

    def __init__(self) -> None:
        self._bits = np.zeros(self.BITS >> 3, dtype=np.uint8)

    def mark(self, keys: pa.Array) -> np.ndarray:
        """Per key: whether an earlier key (this call's or a previous one's) may equal it."""
        hashes = np.fromiter(
            (hash(k) for k in keys.to_pylist()), dtype=np.int64, count=len(keys)
        ).view(np.uint64) & np.uint64(self.BITS - 1)
        byte = (hashes >> np.uint64(3)).astype(np.int64)
        bit = np.left_shift(np.uint8(1), (hashes & np.uint64(7)).astype(np.uint8))
        repeated = (self._bits[byte] & bit) != 0
        _, first = np.unique(hashes, return_index=True)
        later = np.ones(len(keys), dtype=bool)
        later[first] = False
        np.bitwise_or.at(self._bits, byte, bit)
        return repeated | later
