"""Read TensorFlow checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index`, a LevelDB-style sorted table mapping each variable
name to a `BundleEntryProto` (dtype, shape, shard, offset, size, CRC32C), and the shards
`PREFIX.data-0000K-of-0000N` holding the raw little-endian tensor bytes. This reads the table
(uncompressed blocks, as TensorFlow writes them), decodes the few protobuf fields it needs by
hand, and checks each tensor's CRC32C. It exists so the pretrained musicnn weights load with
numpy alone; TensorFlow is never needed at run time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5  # compression type + masked CRC32C of the block
# TensorFlow's DataType enum -> numpy dtype (the numeric types a model checkpoint holds).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}


class TFCheckpointError(Exception):
    """A file that is not a readable TensorFlow V2 checkpoint."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, value) of a protobuf message: ints for varint and fixed fields,
    bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in _fields(buf):
        if number == 2:  # TensorShapeProto.dim
            dims.append(next((size for n, size in _fields(value) if n == 1), 0))
        elif number == 3 and value:
            raise TFCheckpointError("a tensor of unknown rank")
    return tuple(dims)


def _entry(name: str, buf: bytes) -> TensorEntry:
    fields = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": None}
    for number, value in _fields(buf):
        if number == 1:
            fields["dtype"] = value
        elif number == 2:
            fields["shape"] = _shape(value)
        elif number in (3, 4, 5, 6):
            fields[{3: "shard", 4: "offset", 5: "size", 6: "crc32c"}[number]] = value
        elif number == 7:
            raise TFCheckpointError(f"{name} is stored in slices (a partitioned variable), which this reader does not join")
    return TensorEntry(name, **fields)


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of the table block a BlockHandle points at."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER_BYTES > len(data):
        raise TFCheckpointError("a table block lies past the end of the index file (truncated?)")
    block, compression = data[offset:offset + size], data[offset + size]
    if compression != 0:
        raise TFCheckpointError(f"compressed table blocks (type {compression}) are not supported")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (restarts + 1)
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + length]))
        pos += length
    return entries


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TensorFlow checks tensor bytes with."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


class TFCheckpoint:
    """`TFCheckpoint(prefix).read(name)` -> numpy array; `.entries` lists every variable."""

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        index = Path(self.prefix + ".index")
        try:
            data = index.read_bytes()
        except OSError as exc:
            raise TFCheckpointError(f"{index}: cannot read the checkpoint index ({exc.strerror or exc})") from None
        if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
            raise TFCheckpointError(f"{index}: not a TensorFlow V2 checkpoint index (no table footer)")
        footer = data[-FOOTER_BYTES:]
        _, pos = _varint(footer, 0)  # the metaindex block: unused
        _, pos = _varint(footer, pos)
        index_start = pos
        try:
            self.entries: dict[str, TensorEntry] = {}
            self.num_shards = 1
            for _, handle in _block(data, footer[index_start:]):
                for key, value in _block(data, handle):
                    name = key.decode("utf-8")
                    if name == "":  # the BundleHeaderProto
                        self.num_shards = dict(_fields(value)).get(1, 1)
                    else:
                        self.entries[name] = _entry(name, value)
        except (TFCheckpointError, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise TFCheckpointError(f"{index}: damaged checkpoint index ({exc})") from None
        self._shards: dict[int, bytes] = {}

    def _shard(self, shard: int) -> bytes:
        if shard not in self._shards:
            path = Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")
            try:
                self._shards[shard] = path.read_bytes()
            except OSError as exc:
                raise TFCheckpointError(f"{path}: cannot read checkpoint data ({exc.strerror or exc})") from None
        return self._shards[shard]

    def read(self, name: str) -> np.ndarray:
        if name not in self.entries:
            raise TFCheckpointError(f"{self.prefix}: no variable {name!r} in the checkpoint")
        entry = self.entries[name]
        if entry.dtype not in DTYPES:
            raise TFCheckpointError(f"{name}: TensorFlow dtype {entry.dtype} is not a numeric type this reader knows")
        raw = self._shard(entry.shard)[entry.offset:entry.offset + entry.size]
        dtype = np.dtype(DTYPES[entry.dtype]).newbyteorder("<")
        expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
        if len(raw) != entry.size or entry.size != expected:
            raise TFCheckpointError(f"{name}: {len(raw)} bytes on disk for shape {entry.shape} "
                                    f"({expected} expected): the data file is truncated or not this checkpoint's")
        if entry.crc32c is not None and masked_crc32c(raw) != entry.crc32c:
            raise TFCheckpointError(f"{name}: CRC32C mismatch, the checkpoint data is damaged")
        return np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))
