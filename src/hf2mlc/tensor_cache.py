"""A plain writer of MLC LLM's weight format: ``params_shard_N.bin`` files and ``tensor-cache.json``.

MLC writes weights with ``tvm.contrib.tvmjs.dump_tensor_cache(..., encode_format="f32-to-bf16")`` and
its runtime reads them back by name.  This module writes the same bytes, so a bundle made here is
indistinguishable from one made by ``mlc_llm convert_weight``; the rules it follows are those of
apache-tvm 0.27's ``tvmjs.py``:

* Tensors are appended, in the order given, to a pending shard buffer.  When ``pending + n >= cap``
  the tensor either goes *out of band* into a shard file of its own (when ``2 * n >= cap``; the
  pending buffer stays open and is committed later, so such shards can precede it) or the pending
  buffer is committed first.  Shards are numbered in commit order; ``finish`` commits the rest.
* Every record's ``format`` is the encode format ("f32-to-bf16" for MLC), whatever its dtype; only
  float32 tensors are actually encoded: the upper 16 bits, rounded to nearest even, except values
  outside ±(largest bfloat16) which are truncated.  ``dtype`` stays "float32" (decoded on load).
* ``tensor-cache.json``: ``{"metadata": ..., "records": [shard, ...]}`` written by ``json.dump`` with
  ``indent=4`` and no trailing newline; each shard is ``{dataPath, format: "raw-shard", nbytes,
  records: [{name, shape, dtype, format, nbytes, byteOffset}], md5sum}``.
* When any float32 tensor was encoded, ``tensor-cache-b16.json`` repeats the records with those
  tensors described as ``{"dtype": "bfloat16", "format": "raw"}``.

Unlike ``dump_tensor_cache`` the writer holds no shard buffer: tensors are encoded (large float32
ones in slices) and written to their shard file as they arrive, optionally on a helper thread.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import UserError

CACHE_JSON = "tensor-cache.json"
CACHE_B16_JSON = "tensor-cache-b16.json"
SHARD_PREFIX = "params_shard"
_ENCODE_FORMATS = ("raw", "f32-to-bf16")
#: Elements encoded per slice when a large float32 tensor is written (keeps temporaries small).
_SLICE_ELEMS = 1 << 22
#: Bytes per write of other tensors (zero-copy slices; lets the disk thread start early).
_SLICE_BYTES = 1 << 20

# The largest float32 whose upper half is a finite bfloat16; larger magnitudes are truncated.
_BF16_LIMIT = np.array([np.finfo(np.float32).max], dtype=np.float32).view(np.uint32)[0] >> 16 << 16
_BF16_LIMIT_F32 = np.array([_BF16_LIMIT], dtype=np.uint32).view(np.float32)[0]


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Encode float32 as bfloat16 bits (uint16) the way tvmjs does: round to nearest even within range."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    in_range = (values < _BF16_LIMIT_F32) & (values > -_BF16_LIMIT_F32)
    bias = np.where(in_range, ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF), np.uint32(0))
    return ((bits + bias.astype(np.uint32)) >> np.uint32(16)).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 bits (uint16) to float32, as MLC's runtime does on load."""
    return (np.asarray(bits).view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def dtype_name(dtype: np.dtype) -> str:
    """TVM's name of a numpy dtype ("float16", "uint32", "bfloat16" for ml_dtypes' bfloat16)."""
    return str(np.dtype(dtype))


def _encoded_nbytes(array: np.ndarray, encode_format: str) -> int:
    if encode_format == "f32-to-bf16" and array.dtype == np.float32:
        return array.size * 2
    return array.nbytes


def _encoded_slices(array: np.ndarray, encode_format: str):
    """The tensor's on-disk bytes, as a sequence of buffers (slices for big float32 tensors)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if encode_format == "f32-to-bf16" and array.dtype == np.float32:
        for start in range(0, flat.size, _SLICE_ELEMS):
            yield memoryview(f32_to_bf16(flat[start : start + _SLICE_ELEMS]).view(np.uint8))
    else:
        raw = memoryview(flat.view(np.uint8))
        for start in range(0, len(raw), _SLICE_BYTES):
            yield raw[start : start + _SLICE_BYTES]


class _ShardFile:
    """One shard being written: its file, running md5 and the JSON record it will complete."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record  # "md5sum" is filled in when the file is closed
        self.handle: BinaryIO = open(path, "wb")
        self.md5 = hashlib.md5()

    def write(self, chunk: memoryview) -> None:
        self.md5.update(chunk)  # hashlib and file writes release the GIL for large buffers
        self.handle.write(chunk)

    def close(self, final_path: Path | None = None) -> None:
        self.handle.close()
        if final_path is not None:
            os.replace(self.path, final_path)
        self.record["md5sum"] = self.md5.hexdigest()


class _DiskThread:
    """Runs write/close operations in submission order on one thread, with at most ``budget`` bytes
    queued (one larger chunk may go alone).  With ``background=False`` it runs them inline."""

    def __init__(self, background: bool, budget: int) -> None:
        self._budget = budget
        self._queued = 0
        self._cond = threading.Condition()
        self._ops: collections.deque = collections.deque()
        self._error: BaseException | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="tensor-cache-disk", daemon=True)
            self._thread.start()

    def submit(self, op: Callable[[], None], nbytes: int = 0) -> None:
        if self._thread is None:
            op()
            return
        with self._cond:
            while self._error is None and self._queued and self._queued + nbytes > self._budget:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._ops.append((op, nbytes))
            self._queued += nbytes
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._stopping:
                    self._cond.wait()
                if not self._ops:
                    return
                op, nbytes = self._ops[0]
            try:
                if self._error is None:
                    op()
            except BaseException as err:  # handed to the producer at its next submit/drain
                self._error = err
            with self._cond:
                self._ops.popleft()
                self._queued -= nbytes
                self._cond.notify_all()

    def drain(self) -> None:
        """Wait for every submitted operation; re-raise the first failure."""
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error


class TensorCacheWriter:
    """Append tensors one at a time; ``finish`` writes the JSON.  Same bytes as ``dump_tensor_cache``.

    No shard buffer is kept: each tensor's bytes go to its shard file as it arrives, the open shard
    under a temporary name because its number is only known when it is committed.  With
    ``background=True`` hashing and writing happen on a helper thread, in order, with at most
    ``2 * shard_cap_mb`` queued, so the caller prepares the next tensor while the disk works; the
    arrays passed to :meth:`add` must not be modified afterwards.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        shard_cap_mb: int = 32,
        encode_format: str = "f32-to-bf16",
        background: bool = False,
    ) -> None:
        if encode_format not in _ENCODE_FORMATS:
            raise ValueError(f"encode_format must be one of {_ENCODE_FORMATS}, got {encode_format!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cap = shard_cap_mb * (1 << 20)
        self.encode_format = encode_format
        self.shards: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._disk = _DiskThread(background, budget=2 * self.cap)
        self._open: _ShardFile | None = None
        self._open_nbytes = 0
        self._temp_count = 0
        #: Bytes of the tensors in their own dtype (before bf16 encoding), as MLC's ParamBytes counts.
        self.param_bytes = 0
        self.bytes_written = 0

    def add(self, name: str, array: np.ndarray) -> None:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        array = np.asarray(array)
        nbytes = _encoded_nbytes(array, self.encode_format)
        record: dict[str, Any] = {
            "name": name,
            "shape": [int(d) for d in array.shape],
            "dtype": dtype_name(array.dtype),
            "format": self.encode_format,
            "nbytes": nbytes,
        }
        self.param_bytes += math.prod(array.shape) * array.dtype.itemsize
        if self._open_nbytes + nbytes >= self.cap:
            if nbytes * 2 >= self.cap:
                # Out of band: a shard of its own, numbered now, ahead of the still-open shard.
                record["byteOffset"] = 0
                shard = self._new_shard_record(nbytes, [record])
                target = _ShardFile(self.out_dir / shard["dataPath"], shard)
                self._write(target, array)
                self._disk.submit(target.close)
                return
            self._commit()
        if self._open is None:
            self._temp_count += 1
            self._open = _ShardFile(self.out_dir / f".open-shard-{self._temp_count}.tmp", {"records": []})
        record["byteOffset"] = self._open_nbytes
        self._write(self._open, array)
        self._open_nbytes += nbytes
        self._open.record["records"].append(record)

    def _write(self, target: _ShardFile, array: np.ndarray) -> None:
        for chunk in _encoded_slices(array, self.encode_format):
            self._disk.submit(functools.partial(target.write, chunk), len(chunk))

    def _new_shard_record(self, nbytes: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        shard = {
            "dataPath": f"{SHARD_PREFIX}_{len(self.shards)}.bin",
            "format": "raw-shard",
            "nbytes": nbytes,
            "records": records,
            "md5sum": None,  # set when the file is closed; the key keeps tvmjs's position
        }
        self.shards.append(shard)
        self.bytes_written += nbytes
        return shard

    def _commit(self) -> None:
        # Like tvmjs, a shard holding only empty tensors is not committed: they move on to the next.
        if self._open is None or self._open_nbytes == 0:
            return
        target, self._open = self._open, None
        shard = self._new_shard_record(self._open_nbytes, target.record["records"])
        target.record = shard
        self._disk.submit(functools.partial(target.close, self.out_dir / shard["dataPath"]))
        self._open_nbytes = 0

    def finish(self, metadata: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Commit the open shard, wait for the disk, write the JSON files; return the shard records."""
        self._commit()
        if self._open is not None:  # only empty tensors were left open
            self._disk.submit(self._open.close)
        self._disk.drain()
        if self._open is not None:
            self._open.path.unlink()
            self._open = None
        meta = {} if metadata is None else metadata
        _write_cache_json(self.out_dir / CACHE_JSON, meta, self.shards)
        b16 = copy.deepcopy(self.shards)
        encoded = False
        for shard in b16:
            for rec in shard["records"]:
                if rec["format"] == "f32-to-bf16" and rec["dtype"] == "float32":
                    rec["format"], rec["dtype"] = "raw", "bfloat16"
                    encoded = True
        if encoded:
            _write_cache_json(self.out_dir / CACHE_B16_JSON, meta, b16)
        return self.shards

    def close(self) -> None:
        """After a failure: stop the disk thread and close files (the caller discards the directory)."""
        try:
            self._disk.drain()
        except BaseException:
            pass
        if self._open is not None and not self._open.handle.closed:
            self._open.handle.close()


def _write_cache_json(path: Path, metadata: Any, shards: list[dict[str, Any]]) -> None:
    with open(path, "w") as handle:
        json.dump({"metadata": metadata, "records": shards}, handle, indent=4)


def read_tensor_cache(directory: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of a cache (float32 decoded from bf16); for tests and inspection."""
    directory = Path(directory)
    index = json.loads((directory / CACHE_JSON).read_text())
    out: dict[str, np.ndarray] = {}
    for shard in index["records"]:
        data = (directory / shard["dataPath"]).read_bytes()
        for rec in shard["records"]:
            out[rec["name"]] = decode_record(data[rec["byteOffset"] : rec["byteOffset"] + rec["nbytes"]], rec)
    return out


def decode_record(raw: bytes, rec: dict[str, Any]) -> np.ndarray:
    """One tensor from its bytes and its tensor-cache.json record (float32 decoded from bf16)."""
    if rec["format"] == "f32-to-bf16" and rec["dtype"] == "float32":
        arr = bf16_to_f32(np.frombuffer(raw, dtype=np.uint16))
    else:
        arr = np.frombuffer(raw, dtype=np.dtype(rec["dtype"]))
    return arr.reshape(rec["shape"])


def check_library_params(weights_dir: str | Path, params: list[dict[str, Any]], library: str) -> None:
    """Every tensor a model library needs (its ``_metadata()["params"]``) must be in the cache with its shape
    and dtype; else a UserError naming the tensor. The engine and the package stage both ask this, so that
    a mismatch fails on this machine, not at load time on the phone."""
    cache = Path(weights_dir) / CACHE_JSON
    if not cache.is_file():
        raise UserError(f"{cache}: not found; point the weights directory at a converted model (convert_weights output).")
    records = {
        rec["name"]: rec for shard in json.loads(cache.read_text(encoding="utf-8"))["records"] for rec in shard["records"]
    }
    for param in params:
        rec = records.get(param["name"])
        if rec is None:
            raise UserError(
                f"{cache}: has no tensor {param['name']!r}, which {library} needs; "
                "convert the weights with the quantization the library was built for."
            )
        if [int(s) for s in rec["shape"]] != [int(s) for s in param["shape"]] or rec["dtype"] != param["dtype"]:
            raise UserError(
                f"{cache}: tensor {param['name']!r} is {rec['dtype']}{rec['shape']}, but {library} expects "
                f"{param['dtype']}{param['shape']}; weights and library come from different models or quantizations."
            )
