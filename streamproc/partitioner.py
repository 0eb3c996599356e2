"""How Kafka producers place a keyed record: the two key partitioners in use.

- ``"murmur2"``: ``(murmur2(key) & 0x7fffffff) % n``, what the Java producer's built-in
  partitioner (``Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions``) and Kafka Streams
  do for a non-null key, and what librdkafka does with ``partitioner=murmur2`` /
  ``murmur2_random``.
- ``"crc32"``: ``crc32(key) % n`` (unsigned CRC-32, zlib's), librdkafka's ``consistent`` /
  ``consistent_random``: the default of confluent-kafka and every other librdkafka client.

A topic read by a topology declares which of them its producers use
(``topology.stream(..., partitioner=...)``); streamproc itself always writes with murmur2.
Null keys have no hash partition: the producers pick a (sticky or random) partition.
"""
from __future__ import annotations

from struct import Struct, unpack_from
from zlib import crc32

__all__ = ["PARTITIONERS", "murmur2", "partition_for", "partitions_for", "check_partitioner"]

#: The partitioners a topic may declare.
PARTITIONERS = ("murmur2", "crc32")

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


def check_partitioner(name, where: str = "") -> str:
    """``name`` if it is a known partitioner, else ``ValueError`` saying which exist."""
    if name not in PARTITIONERS:
        raise ValueError(f"{where}partitioner must be 'murmur2' (Java clients, librdkafka murmur2/murmur2_random) "
                         f"or 'crc32' (librdkafka consistent/consistent_random, confluent-kafka's default), "
                         f"got {name!r}")
    return name


def partition_for(key_bytes: bytes, num_partitions: int, partitioner: str = "murmur2") -> int:
    """The partition ``partitioner`` gives a serialized, non-null key among ``num_partitions``."""
    if key_bytes is None:
        raise TypeError("a null key has no hash partition (Kafka's producer picks a sticky "
                        "partition for null keys); pass the serialized key bytes")
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    if partitioner == "murmur2":
        return (murmur2(key_bytes) & 0x7FFFFFFF) % num_partitions
    if partitioner == "crc32":
        return crc32(key_bytes) % num_partitions
    raise ValueError(check_partitioner(partitioner))


def partitions_for(keys_bytes: list, num_partitions: int, partitioner: str = "murmur2") -> list:
    """:func:`partition_for` of each key of ``keys_bytes``; ``-1`` for a null key (the producer picks)."""
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    n = num_partitions
    if partitioner == "murmur2":
        return [-1 if k is None else (murmur2(k) & 0x7FFFFFFF) % n for k in keys_bytes]
    if partitioner == "crc32":
        return [-1 if k is None else crc32(k) % n for k in keys_bytes]
    raise ValueError(check_partitioner(partitioner))
