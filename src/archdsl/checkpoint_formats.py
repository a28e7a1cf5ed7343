"""Reading checkpoint files of other frameworks into a name -> tensor mapping, never executing
code from the file: a checkpoint is untrusted input.

* `.pdparams`: PaddlePaddle's `paddle.save` of a state dict, a pickle of name -> numpy array.
  It is read without paddle by an unpickler that admits only numpy arrays, numeric dtypes and
  plain containers; any other global named in the pickle is refused before anything is called.
* `.npz`: numpy's archive of named arrays, read with `allow_pickle=False`. Arrays named
  `__like_this__` are not weights (test vectors keep their input and output there).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class UnsafeCheckpoint(ValueError):
    """The file asks for something other than arrays and plain containers."""


def _numeric_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(obj, (str, bytes, np.dtype)):
        raise UnsafeCheckpoint(f"a dtype is described by a {type(obj).__name__}, not a type code")
    dtype = np.dtype(obj)
    if dtype.hasobject or dtype.kind not in "biufc":
        raise UnsafeCheckpoint(f"dtype {dtype} is not a plain numeric type")
    return dtype


class _ArrayType:
    """Stands for `numpy.ndarray` in the pickle: `_reconstruct` needs it as an argument, but
    nothing may call numpy.ndarray's constructor with arguments from the file."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsafeCheckpoint("the pickle calls numpy.ndarray directly, which an array's pickle never does")


_ARRAY_TYPE = _ArrayType()


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") and then sets its state
    # (shape, dtype, bytes); the dtype in that state comes from _numeric_dtype too
    if cls is not _ARRAY_TYPE or tuple(shape) != (0,):
        raise UnsafeCheckpoint("an array is rebuilt in a way numpy's own pickles never do")
    return np.ndarray.__new__(np.ndarray, (0,), _numeric_dtype(dtype_code))


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # numpy's pickle-protocol-5 form of an array
    array = np.frombuffer(bytes(buffer), dtype=_numeric_dtype(dtype))
    return array.reshape(shape, order="F" if order == "F" else "C").copy()


def _scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(data, bytes):
        raise UnsafeCheckpoint("a numpy scalar holds something other than raw bytes")
    return np.frombuffer(data, dtype=_numeric_dtype(dtype))[0]


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    # how pickle protocol 2 writes bytes: _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpoint("_codecs.encode is admitted only to turn latin-1 text into bytes")
    return text.encode("latin1")


# the only globals a numpy-array pickle needs; each maps to a checking wrapper, not the original
_ADMITTED: dict[tuple[str, str], Callable] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _ARRAY_TYPE,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "tuple"): tuple,  # Paddle reduces a Tensor outside a state dict to (name, array)
}


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        admitted = _ADMITTED.get((module, name))
        if admitted is None:
            raise UnsafeCheckpoint(
                f"the pickle names {module}.{name}, which is not a numpy array or plain container; refused without running it"
            )
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpoint("the pickle refers to external persistent objects; refused")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype.hasobject:
        raise UnsafeCheckpoint("an array holds Python objects")
    return torch.from_numpy(np.ascontiguousarray(array))


def read_pdparams(path: Path) -> dict[str, torch.Tensor]:
    """A `paddle.save`d state dict -> name -> tensor, without paddle."""
    with open(path, "rb") as file:
        stored = ArrayUnpickler(file, encoding="latin1").load()
    if not isinstance(stored, dict):
        raise ValueError(f"expected a mapping of names to arrays, found {type(stored).__name__}")
    stored = dict(stored)
    stored.pop("StructuredToParameterName@@", None)  # Paddle's structured -> internal name table
    # protocols 2 and 3 split arrays too big for them into slices: join them again
    for key, info in stored.pop("UnpackBigParamInfor@@", {}).items():
        stored[key] = np.concatenate([stored.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    state = {}
    for key, value in stored.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # (name, array): a Paddle Tensor saved outside a state dict
        if not isinstance(value, np.ndarray):
            raise ValueError(f"entry {key!r} is a {type(value).__name__}, not an array")
        state[str(key)] = _to_tensor(value)
    return state


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """A numpy .npz of name -> array (no pickled objects allowed) -> name -> tensor."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: _to_tensor(archive[key]) for key in archive.files if not (key.startswith("__") and key.endswith("__"))}
