"""Read a Hugging Face GPT-NeoX checkpoint one tensor at a time, under MLC's parameter names.

Weights come from ``model.safetensors`` / ``model.safetensors.index.json`` (preferred when present) or
``pytorch_model.bin`` / ``pytorch_model.bin.index.json``.  Only one tensor is resident at a time:

* safetensors tensors are each mapped on their own, copy-on-write, and unmapped when the array goes.
  (``safe_open`` memory-maps the whole file and every page it touches stays in the process's
  resident set until the file is closed: converting a 384 MB file that way peaked at 444 MB RSS.)  The
  format is an 8-byte little-endian header length, a JSON header of ``{name: {dtype, shape,
  data_offsets}}``, then the raw bytes; tests compare every tensor with ``safe_open``'s.
* PyTorch pickles are opened with ``torch.load(mmap=True, weights_only=True)``, which maps the file
  and builds tensors lazily; after a tensor is copied out its pages are released (``madvise``).

Tensors are looked up by the names an architecture's checkpoint class gives them
(:meth:`HuggingFaceWeights.canonical`; here, the names as stored):
:class:`hf2mlc.model.gpt_neox.loader.GPTNeoXCheckpoint` maps GPT-NeoX checkpoints' spellings onto the names
its parameter set uses, as MLC LLM keeps each architecture's name mapping beside its model.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import mmap
import os
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

logger = logging.getLogger(__name__)

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@dataclass(frozen=True)
class TensorInfo:
    """Where one checkpoint tensor lives and what it is, known without reading its data."""

    name: str  # as looked up (HuggingFaceWeights.canonical)
    stored_name: str  # as spelled in the file
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int = -1  # absolute byte offset (safetensors only)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


# ----------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: Path) -> list[TensorInfo]:
    """Parse a .safetensors header into tensor locations (validated against the file size)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                raise ValueError("header length past the end of the file")
            header = json.loads(handle.read(header_len))
    except (OSError, ValueError, struct.error) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err}); download it again.") from err
    base = 8 + header_len
    infos = []
    for stored, entry in header.items():
        if stored == "__metadata__":
            continue
        dtype_code = entry.get("dtype")
        if dtype_code not in _SAFETENSORS_DTYPES:
            raise UserError(f"{path}: tensor {stored!r} has dtype {dtype_code!r}, which hf2mlc cannot read.")
        dtype = _numpy_dtype(_SAFETENSORS_DTYPES[dtype_code])
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(x) for x in entry["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize or base + end > size:
            raise UserError(f"{path}: tensor {stored!r} has inconsistent offsets; the file is damaged.")
        infos.append(TensorInfo(stored, stored, path, dtype, shape, base + begin))
    return infos


def _pread_into(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill ``buffer`` from ``offset`` without moving a shared file position (thread-safe)."""
    done = 0
    while done < len(buffer):
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [buffer[done:]], offset + done)
        else:  # older macOS Pythons: pread returns bytes, copied in bounded pieces
            piece = os.pread(fd, min(len(buffer) - done, 16 << 20), offset + done)
            n = len(piece)
            buffer[done : done + n] = piece
        if n <= 0:
            raise UserError(f"{path}: unexpected end of file; the download is incomplete.")
        done += n


def _map_tensor(fd: int, info: TensorInfo) -> np.ndarray:
    """The tensor's bytes mapped copy-on-write: the array shares the page cache's pages (no copy
    into fresh memory, whose page faults made reading the costliest step of a conversion) and
    stays writable; its own mapping goes away with the array, so only the tensors still in use
    count in the resident set."""
    nbytes = info.size * info.dtype.itemsize
    start = info.offset // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    mapping = mmap.mmap(
        fd, info.offset - start + nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start
    )
    return np.frombuffer(mapping, dtype=info.dtype, count=info.size, offset=info.offset - start).reshape(info.shape)


# ----------------------------------------------------------------------------- torch pickles

_MADV_DONTNEED = 4
_COPY_SLICE = 16 << 20


def _release_pages(address: int, nbytes: int) -> None:
    """Drop the (clean, file-backed) pages of a mapped range from this process's resident set."""
    if not sys.platform.startswith("linux") or nbytes <= 0:
        return
    page = mmap.PAGESIZE
    start = address // page * page
    length = -(-(address + nbytes - start) // page) * page
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), ctypes.c_int(_MADV_DONTNEED))


def _torch_load(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # only the legacy (pre-zip) format cannot be memory-mapped
            raise UserError(f"{path}: cannot load this PyTorch checkpoint ({err}).") from err
        logger.warning("%s: legacy PyTorch format, loading the whole file into memory", path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, weights_only refusals, truncated zips
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise UserError(
                f"{path}: torch refused to unpickle this checkpoint without running code from it ({first}); "
                "use the repo's .safetensors weights, or convert the file to safetensors where you trust it."
            ) from err
        raise UserError(f"{path}: cannot load this PyTorch checkpoint ({first}).") from err


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


# ----------------------------------------------------------------------------- the checkpoint


class HuggingFaceWeights:
    """The tensors of one Hugging Face checkpoint directory, by :meth:`canonical` name, read on demand."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.format, self.files = find_weight_files(self.model_dir)
        self.tensors: dict[str, TensorInfo] = {}
        self._fds: dict[Path, int] = {}
        self._torch_file: Path | None = None
        self._torch_state: dict[str, Any] | None = None
        for path in self.files:
            infos = read_safetensors_header(path) if self.format == "safetensors" else self._torch_infos(path)
            for info in infos:
                name = self.canonical(info.stored_name)
                if name is None:
                    continue
                info = replace(info, name=name)
                if info.name in self.tensors:
                    raise UserError(
                        f"{path}: tensor {info.stored_name!r} duplicates {self.tensors[info.name].stored_name!r} "
                        f"in {self.tensors[info.name].file.name}; the checkpoint is ambiguous."
                    )
                self.tensors[info.name] = info

    def canonical(self, stored: str) -> str | None:
        """The name a stored tensor is looked up by, or None for an entry that is not a weight (skipped).
        The name as stored; an architecture's checkpoint class maps its own spellings."""
        return stored

    def describe_missing(self, name: str) -> str:
        """How the error for a tensor the checkpoint lacks names it (with the other spellings tried)."""
        return repr(name)

    def _torch_infos(self, path: Path) -> list[TensorInfo]:
        import torch

        state = self._torch_state_of(path)
        infos = []
        for stored, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            dtype = _torch_to_numpy(torch.empty(0, dtype=value.dtype)).dtype
            infos.append(TensorInfo(stored, stored, path, dtype, tuple(value.shape)))
        return infos

    def _torch_state_of(self, path: Path) -> dict[str, Any]:
        if self._torch_file != path:
            self._torch_state = None  # unmap the previous file before mapping the next
            self._torch_state = _torch_load(path)
            self._torch_file = path
        assert self._torch_state is not None
        return self._torch_state

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise UserError(
                f"{self.where()}: no tensor {self.describe_missing(name)}; the checkpoint "
                "does not match its config.json or is incomplete."
            ) from None

    def where(self) -> str:
        """The file a missing tensor should have been in: the index, or the single weights file."""
        index = self.model_dir / (SAFETENSORS_INDEX if self.format == "safetensors" else TORCH_INDEX)
        return str(index if index.is_file() else self.files[0])

    def read(self, name: str) -> np.ndarray:
        """A fresh array (the checkpoint's dtype; bfloat16 as ml_dtypes.bfloat16) for one tensor."""
        info = self.info(name)
        if self.format == "safetensors":
            fd = self._fds.get(info.file)
            if fd is None:
                fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
            if info.size and hasattr(mmap, "MAP_PRIVATE"):
                return _map_tensor(fd, info)
            out = np.empty(info.shape, dtype=info.dtype)
            _pread_into(fd, memoryview(out.reshape(-1).view(np.uint8)), info.offset, info.file)
            return out
        tensor = self._torch_state_of(info.file)[info.stored_name]
        view = _torch_to_numpy(tensor)
        if not view.flags.c_contiguous:
            out = np.array(view, copy=True)
            _release_pages(tensor.data_ptr(), tensor.numel() * tensor.element_size())
            return out
        # Copy slice by slice, releasing the mapped pages behind us: one tensor resident, not two.
        out = np.empty(view.shape, dtype=view.dtype)
        src, dst = view.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)
        base = tensor.data_ptr()
        for start in range(0, src.size, _COPY_SLICE):
            stop = min(src.size, start + _COPY_SLICE)
            dst[start:stop] = src[start:stop]
            _release_pages(base + start, stop - start)
        return out

    def total_elements(self) -> int:
        """Elements of all weight tensors (skipped entries excluded): MLC's parameter count."""
        return sum(info.size for info in self.tensors.values())

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._torch_state = None
        self._torch_file = None

    def __enter__(self) -> HuggingFaceWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_weight_files(model_dir: Path) -> tuple[str, list[Path]]:
    """("safetensors" | "pytorch", files) for a model directory; safetensors win when both exist."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a directory; point the model source at a downloaded Hugging Face model.")
    for fmt, index_name, single in (
        ("safetensors", SAFETENSORS_INDEX, SAFETENSORS_FILE),
        ("pytorch", TORCH_INDEX, TORCH_FILE),
    ):
        index = model_dir / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{index}: not a valid index (no weight_map): {err}") from err
            files = sorted({model_dir / rel for rel in weight_map.values()}, key=lambda p: p.name)
            missing = [p.name for p in files if not p.is_file()]
            if missing:
                raise UserError(f"{index}: lists {', '.join(missing)}, which is missing; download the model again.")
            return fmt, files
        if (model_dir / single).is_file():
            return fmt, [model_dir / single]
    raise UserError(
        f"{model_dir}: no weights found; expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} "
        f"or {TORCH_INDEX} (was the download complete?)."
    )
