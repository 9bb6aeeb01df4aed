"""The llama.cpp library, through llama-cpp-python (the `cvgen[llama]` extra), and the three
ggml helpers an eval callback needs, which the binding does not declare.

One llama.cpp build serves the binaries and the binding: the binding is installed without
compiling (`CMAKE_ARGS=-DLLAMA_BUILD=OFF`) and reads the folder of `libllama.so` from
`LLAMA_CPP_LIB_PATH` when it is imported. `library_folder` picks that folder, first found:
`$LLAMA_CPP_LIB_PATH`, `$CVGEN_LLAMA_CPP` (the bin folder that scripts/build_llama_cpp.sh
prints), cvgen's cache (`~/.cache/cvgen/llama.cpp/<commit>-shared/bin`), and last the
binding's own `llama_cpp/lib` (a binding that compiled its own library).

`ggml_get_name`, `ggml_nbytes` and `ggml_backend_tensor_get` come from libggml-base, which
ships beside libllama. `TensorHead` reads the first fields of `struct ggml_tensor` (ggml.h at
the pinned commit): type, buffer, ne[4], nb[4].
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.llamacpp.binaries import ENV_BIN_DIR, shared_bin_dir

BINDING_VERSION = "0.3.36"  # its vendored llama.cpp is the pinned commit
LLAMA_CPP_COMMIT = "0c1e570"
EXTRA_HINT = (
    "install the extra: pip install 'cvgen[llama]' (scripts/setup.sh installs it against the "
    "build of scripts/build_llama_cpp.sh)"
)
GGML_TYPE_F32 = 0


class EngineError(CvgenError, RuntimeError):
    """The llama.cpp engine cannot run: no binding, no library, or a model it cannot use."""


class TensorHead(ctypes.Structure):
    """The head of `struct ggml_tensor`: its type, buffer, sizes (ne) and strides (nb)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


@dataclass(frozen=True)
class Binding:
    """The imported binding (`llama`, the llama_cpp module), the ggml helpers (`ggml`, a
    CDLL of libggml-base) and the folder both were loaded from."""

    llama: Any
    ggml: Any
    folder: Path


def _has_library(folder: Path) -> bool:
    return (folder / "libllama.so").exists() or (folder / "libllama.dylib").exists()


def library_folder() -> Path | None:
    """The folder holding libllama (see the module docstring for the order); None when only
    the binding's own folder is left."""
    candidates = [
        os.environ.get("LLAMA_CPP_LIB_PATH"),
        os.environ.get(ENV_BIN_DIR),
        str(shared_bin_dir()),
    ]
    for candidate in candidates:
        if candidate and _has_library(Path(candidate)):
            return Path(candidate)
    return None


def _declare_ggml(folder: Path) -> Any:
    """libggml-base from `folder`, with the three helpers declared."""
    names = [folder / "libggml-base.so", folder / "libggml-base.dylib"]
    path = next((name for name in names if name.exists()), None)
    if path is None:
        raise EngineError(f"{folder}: no libggml-base beside libllama; {EXTRA_HINT}")
    ggml = ctypes.CDLL(str(path))
    ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_get_name.restype = ctypes.c_char_p
    ggml.ggml_nbytes.argtypes = [ctypes.c_void_p]
    ggml.ggml_nbytes.restype = ctypes.c_size_t
    ggml.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    ggml.ggml_backend_tensor_get.restype = None
    return ggml


def binding_available() -> bool:
    """True when the binding is installed and a library for it is found (nothing imported)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return False
    return library_folder() is not None or _has_library(Path(spec.origin).parent / "lib")


@lru_cache(maxsize=1)
def load_binding() -> Binding:
    """Import the binding against the library of `library_folder` (set as
    `LLAMA_CPP_LIB_PATH` before the import), silence llama.cpp's log, and declare the ggml
    helpers. Raises `EngineError` naming the extra when the binding or its library is
    missing."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise EngineError(f"the llama.cpp engine needs llama-cpp-python; {EXTRA_HINT}")
    folder = library_folder() or Path(spec.origin).parent / "lib"
    if not _has_library(folder):
        raise EngineError(
            f"llama-cpp-python finds no libllama (LLAMA_CPP_LIB_PATH, CVGEN_LLAMA_CPP and "
            f"{folder} hold none); run scripts/build_llama_cpp.sh or {EXTRA_HINT}"
        )
    if "llama_cpp" not in sys.modules:
        os.environ["LLAMA_CPP_LIB_PATH"] = str(folder)
    try:
        module: ModuleType = __import__("llama_cpp")
    except (OSError, RuntimeError, FileNotFoundError) as exc:
        raise EngineError(f"llama-cpp-python cannot load {folder}: {exc}; {EXTRA_HINT}") from None
    version = getattr(module, "__version__", "?")
    if version != BINDING_VERSION:
        raise EngineError(
            f"llama-cpp-python {version} is installed; cvgen needs {BINDING_VERSION}, whose "
            f"llama.cpp is the pinned {LLAMA_CPP_COMMIT}; {EXTRA_HINT}"
        )
    module.llama_backend_init()
    _silence(module)
    return Binding(llama=module, ggml=_declare_ggml(folder), folder=folder)


_LOG_SINK: list[Any] = []  # keeps the log callback alive for the life of the process


def _silence(module: Any) -> None:
    """Drop llama.cpp's log lines (errors come back as return codes, checked by the engine)."""
    if os.environ.get("CVGEN_LLAMA_LOG"):
        return

    @module.llama_log_callback
    def _drop(level: int, text: bytes, user_data: Any) -> None:
        return None

    _LOG_SINK.append(_drop)
    module.llama_log_set(_drop, None)
