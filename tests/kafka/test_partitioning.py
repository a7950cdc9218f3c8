"""The relay's partitioner must pick the partition aiokafka's (and so Java's) default partitioner picks."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from relay.kafka.partitioning import murmur2, partition_for


@given(st.binary(max_size=300))
def test_murmur2_equals_aiokafkas_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.binary(min_size=1, max_size=80), st.integers(min_value=1, max_value=64))
def test_partition_equals_the_default_partitioners(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)


def test_every_tail_length() -> None:
    """Lengths 0-7: no word or one word, followed by 0, 1, 2 or 3 trailing bytes."""
    for length in range(8):
        data = bytes(range(1, length + 1))
        assert murmur2(data) == aiokafka_murmur2(data)
