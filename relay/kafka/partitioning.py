"""Kafka's default partitioner for keyed records: `toPositive(murmur2(key)) % partitions`.

The same partition as the Java client and as aiokafka's DefaultPartitioner, so one entity stays on
one partition whichever client wrote it. aiokafka's murmur2 reads a byte at a time; this one reads
4-byte words with one `struct` call, about twice as fast on an entity id.
"""

from __future__ import annotations

import struct
from functools import lru_cache

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


@lru_cache(maxsize=64)
def _words(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data`, as an unsigned 32-bit integer (aiokafka's `murmur2`)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    for word in _words(length >> 2).unpack_from(data):
        k = (word * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        end = length - tail
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a keyed record on a topic of `partitions` partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
