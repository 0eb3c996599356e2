"""Kafka's default key partitioner, as the Java client computes it.

``partition_for(key, n) == (murmur2(key) & 0x7fffffff) % n`` is what the Java
producer's built-in partitioner (``Utils.toPositive(Utils.murmur2(keyBytes)) %
numPartitions``) and Kafka Streams do for a non-null key, and what librdkafka
does with ``partitioner=murmur2`` / ``murmur2_random`` (librdkafka's own
default, ``consistent_random``, is CRC32-based and places keys differently).
Null keys have no hash partition: the producers pick a (sticky) partition.
"""
from __future__ import annotations

from struct import Struct, unpack_from

__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C  # the mixing constant m = 0x5BD1E995 is inlined below
# struct unpackers for keys of up to 256 bytes, by number of 4-byte blocks
_BLOCKS = [Struct(f"<{n}I").unpack_from for n in range(65)]


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the signed 32-bit MurmurHash2 of `data`
    (seed 0x9747b28c, 4-byte blocks read little-endian)."""
    if type(data) is not bytes and not isinstance(data, (bytearray, memoryview)):
        raise TypeError(f"murmur2 hashes bytes, got {type(data).__name__}")
    length = len(data)
    h = _SEED ^ length
    n4 = length >> 2
    if n4:
        blocks = _BLOCKS[n4](data) if n4 <= 64 else unpack_from(f"<{n4}I", data)
        for k in blocks:
            k = (k * 0x5BD1E995) & 0xFFFFFFFF
            # h = h*m ^ (k ^ k>>>24)*m, all mod 2**32 (masking once is enough for * and ^)
            h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def partition_for(key_bytes: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner gives a serialized, non-null key."""
    if key_bytes is None:
        raise TypeError("a null key has no hash partition (Kafka's producer picks a sticky "
                        "partition for null keys); pass the serialized key bytes")
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    return (murmur2(key_bytes) & 0x7FFFFFFF) % num_partitions
