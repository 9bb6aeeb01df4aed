"""Load a model for collection: a local Hugging Face folder, a hub id, or a local .gguf file.

A `.gguf` file is loaded through transformers' `gguf_file=` and dequantised. Remote code is
never run unless `trust_remote_code=True` (the CLI's `--trust-remote-code`).

`ModelSource.identity()` is a content key for the state store: it changes when the weights do,
without hashing a whole multi-gigabyte file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvgen.common.errors import CvgenError
from cvgen.common.files import not_regular_message
from cvgen.vectors.model_header import read_gguf_header

HUB_ID_PATTERN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")
SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
IDENTITY_CHUNK = 4 << 20  # bytes hashed at the head, middle and tail of each weight file


class ModelError(CvgenError, ValueError):
    """The model cannot be found, loaded or used; the message says which and why."""


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: kind is "gguf", "folder" or "hub"."""

    spec: str
    kind: str
    directory: str  # folder holding the files (gguf, folder) or the hub id
    gguf_file: str | None = None
    label: str | None = None  # the display name, where the folder's own name is not it

    @property
    def name(self) -> str:
        """A display name: the file stem, folder name (the repository's name for a hub-cache
        snapshot, the link's for a linked folder) or the hub id's last part."""
        if self.kind == "gguf" and self.gguf_file:
            return Path(self.gguf_file).stem
        if self.label:
            return self.label
        return Path(self.directory).name or self.directory

    @property
    def location(self) -> str:
        """Where the model is: the absolute path of a local file or folder, or the hub id."""
        if self.kind == "gguf" and self.gguf_file:
            return str(Path(self.directory) / self.gguf_file)
        return self.directory

    @property
    def slug(self) -> str:
        """The name made safe for file names: only [A-Za-z0-9._-], never ':'."""
        return SLUG_UNSAFE.sub("-", self.name).strip("-.") or "model"

    def load_kwargs(self, *, trust_remote_code: bool) -> dict[str, Any]:
        """Keyword arguments shared by the config, tokenizer and model loaders."""
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs

    def identity(self, config: Any) -> str:
        """A content key of the model: the hub commit, or sampled hashes of every file (weights,
        config and tokenizer alike; files up to 12 MiB are hashed whole)."""
        if self.kind == "hub":
            revision = getattr(config, "_commit_hash", None) or "unknown-revision"
            return f"hub:{self.directory}@{revision}"
        if self.kind == "gguf" and self.gguf_file:
            return f"gguf:{_sampled_file_hash(Path(self.directory) / self.gguf_file)}"
        digest = hashlib.sha256()
        for path in sorted(Path(self.directory).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                digest.update(path.name.encode())
                digest.update(_sampled_file_hash(path).encode())
        return f"folder:{digest.hexdigest()}"


def _sampled_file_hash(path: Path) -> str:
    """SHA-256 over the size and three 4 MiB chunks (head, middle, tail) of a file."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in sorted(
            {0, max(0, size // 2 - IDENTITY_CHUNK // 2), max(0, size - IDENTITY_CHUNK)}
        ):
            handle.seek(offset)
            digest.update(handle.read(IDENTITY_CHUNK))
    return digest.hexdigest()


def resolve_model_source(spec: str) -> ModelSource:
    """Classify `spec`: a path to a .gguf file, a local model folder, or a hub id.

    Symbolic links are followed: a link to a .gguf file keeps its own name in its own folder
    (the hub cache's files are links into `blobs/` with hash names), a link to a folder is
    named as the link. A Hugging Face hub-cache folder is accepted as a folder: a snapshot
    (`models--owner--name/snapshots/<rev>`, named `name`), or the repository folder
    `models--owner--name` itself (the snapshot `refs/main` points at). A folder without a
    config.json that holds exactly one .gguf file is that file."""
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        irregular = not_regular_message(path)
        if irregular is not None:
            raise ModelError(f"--model: {irregular}")
        if not path.is_file():
            raise ModelError(f"--model: GGUF file not found: {spec}")
        return _gguf_source(spec, path)
    if path.is_dir():
        return _folder_source(spec, path)
    if path.exists():
        raise ModelError(f"--model: {spec} is a file but not a .gguf file")
    if HUB_ID_PATTERN.match(spec):
        return ModelSource(spec, "hub", spec)
    raise ModelError(
        f"--model: '{spec}' is not a .gguf file, a model folder or a hub id like 'owner/name'"
    )


def _gguf_source(spec: str, path: Path) -> ModelSource:
    """A .gguf file: its folder resolved, its own name kept (a link stays the link)."""
    return ModelSource(spec, "gguf", str(path.parent.resolve()), path.name)


def _folder_source(spec: str, path: Path) -> ModelSource:
    """A model folder, a hub-cache snapshot or repository folder, or a folder of one .gguf."""
    folder = _hub_repository_snapshot(spec, path) or path
    resolved = folder.resolve()
    if not (resolved / "config.json").is_file():
        ggufs = sorted(p.name for p in resolved.glob("*.gguf") if p.is_file())
        if len(ggufs) == 1:
            return _gguf_source(spec, resolved / ggufs[0])
        if ggufs:
            raise ModelError(
                f"--model: folder {spec} has no config.json but {len(ggufs)} .gguf files "
                f"({', '.join(ggufs[:5])}{', ...' if len(ggufs) > 5 else ''}); pass one of them"
            )
        raise ModelError(f"--model: folder {spec} has no config.json (not a Hugging Face model)")
    return ModelSource(spec, "folder", str(resolved), label=_folder_label(path, resolved))


def _hub_repository_snapshot(spec: str, path: Path) -> Path | None:
    """For a hub-cache repository folder (`models--owner--name`, holding `snapshots/`), the
    snapshot `refs/main` names (or its only snapshot); None for any other folder."""
    snapshots = path / "snapshots"
    if (path / "config.json").exists() or not snapshots.is_dir():
        return None
    main = path / "refs" / "main"
    if main.is_file():
        revision = main.read_text(encoding="utf-8", errors="replace").strip()
        if (snapshots / revision).is_dir():
            return snapshots / revision
    revisions = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    if len(revisions) == 1:
        return snapshots / revisions[0]
    raise ModelError(
        f"--model: hub-cache folder {spec} has {len(revisions)} snapshots and no usable "
        f"refs/main; pass one of {snapshots}/<revision>"
    )


def _folder_label(given: Path, resolved: Path) -> str | None:
    """The display name of a folder when its resolved name is not it: `name` for a hub-cache
    snapshot `models--owner--name/snapshots/<rev>`, else the name of a link that was given."""
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent.name.split("--", 2)[-1] or None
    if given.is_symlink():
        return Path(os.path.abspath(given)).name or None
    return None


def resolve_device(device: str) -> torch.device:
    """ "auto" is cuda when available, then mps, else cpu."""
    if device != "auto":
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ModelError(f"--device: unknown device '{device}'") from None
        _check_device_available(chosen)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_for_local_rank(device: torch.device, local_rank: int | None) -> torch.device:
    """Under torchrun, a plain `cuda` device becomes `cuda:LOCAL_RANK` (modulo the GPU count),
    so the processes of a node use one GPU each; anything else is returned as it is."""
    if local_rank is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))


def _check_device_available(device: torch.device) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"--device: '{device}' asked for, but this torch sees no CUDA device")
        if device.index is not None and device.index >= count:
            raise ModelError(
                f"--device: '{device}' asked for, but this torch sees {count} CUDA devices"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError(f"--device: '{device}' asked for, but MPS is not available")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """ "auto" is float32 on cpu, bfloat16 on cuda when supported, else float16."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


HUB_PROBE_SECONDS = 5.0  # how long one connection attempt to the hub (or its proxy) may take
_hub_offline: dict[str, bool] = {}  # endpoint -> unreachable, probed once per process


def hub_endpoint() -> str:
    """The hub's address: $HF_ENDPOINT, else huggingface_hub's (https://huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_is_offline() -> bool:
    """True when HF_HUB_OFFLINE is set, or one TCP connection to the hub's endpoint (or to
    the proxy that reaches it) fails within HUB_PROBE_SECONDS. Probed once per endpoint and
    process, with no retries: huggingface_hub itself retries a refused connection for ~27 s."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    if "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE:
        return True
    endpoint = hub_endpoint()
    if endpoint not in _hub_offline:
        _hub_offline[endpoint] = not _can_connect(endpoint)
    return _hub_offline[endpoint]


def _can_connect(url: str) -> bool:
    """Whether a TCP connection opens to `url`'s host, or to the proxy the environment sets
    for it (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, honouring NO_PROXY)."""
    import socket
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlsplit(url)
    target = parsed
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and parsed.hostname and not urllib.request.proxy_bypass(parsed.hostname):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not target.hostname:
        return False
    try:
        port = target.port or (443 if target.scheme == "https" else 80)
        with socket.create_connection((target.hostname, port), timeout=HUB_PROBE_SECONDS):
            return True
    except (OSError, ValueError):  # refused, unreachable, no DNS, timed out, bad port
        return False


def _hub_cached(repo_id: str) -> bool:
    """Whether the hub cache holds `repo_id`'s config.json (so it loads offline)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _offline_kwargs(source: ModelSource) -> dict[str, Any]:
    """For a hub id while the hub cannot be reached: `local_files_only` when the cache holds
    it, else a one-line `ModelError`; nothing for a local source or a reachable hub."""
    if source.kind != "hub" or not hub_is_offline():
        return {}
    if _hub_cached(source.directory):
        return {"local_files_only": True}
    raise ModelError(f"offline: cannot fetch {source.directory}; pass a local folder or .gguf")


def _from_pretrained(
    loader: Any, source: ModelSource, what: str, *, trust_remote_code: bool, **extra: Any
) -> Any:
    """Call a transformers `from_pretrained` for `source`; failures become a `ModelError`.
    A .gguf file is first checked to be whole (`read_gguf_header`). A hub id fails at once, in one line, when the hub cannot be reached and the cache lacks it."""
    if source.kind == "gguf":
        read_gguf_header(Path(source.location))  # a truncated file fails here, named
    offline = _offline_kwargs(source)
    try:
        return loader.from_pretrained(
            source.directory,
            **source.load_kwargs(trust_remote_code=trust_remote_code),
            **offline,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"--model {source.spec}: cannot load its {what} ({_first_line(exc)})"
        ) from None


def load_config(source: ModelSource, *, trust_remote_code: bool) -> Any:
    """The model's transformers config (cheap: no weights)."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, source, "config", trust_remote_code=trust_remote_code)


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool) -> Any:
    """The model's tokenizer, with its chat template."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, source, "tokenizer", trust_remote_code=trust_remote_code)


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    device: torch.device,
    trust_remote_code: bool,
    device_map: str = "none",
    load_in: str = "none",
    gpus: Sequence[int] | None = None,
) -> torch.nn.Module:
    """The model in eval mode, weights in `dtype` (a GGUF file is dequantised).

    `device_map="none"` puts the whole model on `device`. `device_map="auto"` lets accelerate
    spread the blocks over the GPUs in `gpus` (default: every visible GPU), then CPU RAM.
    `load_in="8bit"`/`"4bit"` quantises the weights with bitsandbytes (with `dtype` as the
    compute dtype); it needs bitsandbytes installed. Use `input_device(model)` for the inputs.
    """
    from transformers import AutoModelForCausalLM

    extra: dict[str, Any] = {"dtype": dtype}
    if load_in != "none":
        extra["quantization_config"] = bitsandbytes_config(load_in, dtype)
    if device_map == "auto":
        extra["device_map"] = "auto"
        if gpus is not None:
            extra["max_memory"] = gpu_memory_budget(gpus)
    elif load_in != "none":
        # quantised weights cannot be moved with .to(); place them at load time instead
        extra["device_map"] = {"": _device_map_target(device)}
    model = _from_pretrained(
        AutoModelForCausalLM, source, "weights", trust_remote_code=trust_remote_code, **extra
    )
    if "device_map" not in extra:
        model = model.to(device)
    loaded: torch.nn.Module = model.eval()
    return loaded


def _device_map_target(device: torch.device) -> int | str:
    """A device as transformers' device_map names it: a CUDA index, else "cpu" / "mps"."""
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return device.type


def bitsandbytes_config(load_in: str, dtype: torch.dtype) -> Any:
    """A transformers `BitsAndBytesConfig` for "8bit" or "4bit" (NF4, compute in `dtype`);
    a one-line `ModelError` when bitsandbytes cannot be imported."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelError(
            f"--load-in {load_in}: needs bitsandbytes, which cannot be imported here "
            f"({_first_line(exc)}); install it with: pip install bitsandbytes"
        ) from None
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if load_in == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    raise ModelError(f"--load-in: unknown value '{load_in}'; choose one of: none, 8bit, 4bit")


def gpu_share(local_rank: int, local_world_size: int, gpu_count: int) -> list[int]:
    """The GPUs of one of `local_world_size` processes on a node with `gpu_count` GPUs: an
    equal contiguous block each (rank 1 of 4 on 8 GPUs gets [2, 3])."""
    if local_world_size < 1 or not 0 <= local_rank < local_world_size:
        raise ModelError(
            f"LOCAL_RANK={local_rank} is not in 0..LOCAL_WORLD_SIZE-1 ({local_world_size})"
        )
    per_process = gpu_count // local_world_size
    if per_process < 1:
        raise ModelError(
            f"--device-map auto: {local_world_size} processes on this node but only {gpu_count} "
            "GPUs; start at most one process per GPU"
        )
    return list(range(local_rank * per_process, (local_rank + 1) * per_process))


def gpus_for_process(local_process: tuple[int, int] | None) -> list[int] | None:
    """The GPUs a device map may use in this process: under torchrun, given (LOCAL_RANK,
    LOCAL_WORLD_SIZE), this process's share of the node's GPUs; otherwise None (all)."""
    if local_process is None or local_process[1] <= 1 or not torch.cuda.is_available():
        return None
    return gpu_share(local_process[0], local_process[1], torch.cuda.device_count())


def gpu_memory_budget(gpus: Sequence[int]) -> dict[int | str, int]:
    """accelerate's `max_memory` for `device_map="auto"` restricted to `gpus`: 90% of their
    free memory for weights (the rest for activations), and no CPU offload (accelerate uses no
    device that `max_memory` leaves out)."""
    return {gpu: int(torch.cuda.mem_get_info(gpu)[0] * 0.9) for gpu in gpus}


def input_device(model: torch.nn.Module, default: torch.device) -> torch.device:
    """Where the input ids must go: the device of the input embeddings (the first GPU of a
    device map), else `default`."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    return default


def config_dimensions(config: Any, source: ModelSource) -> tuple[int, int]:
    """(n_layer, n_embd) from a config, also for configs nested under text_config."""
    text_config = getattr(config, "text_config", None) or config
    n_layer = getattr(text_config, "num_hidden_layers", None)
    n_embd = getattr(text_config, "hidden_size", None)
    if not isinstance(n_layer, int) or not isinstance(n_embd, int):
        raise ModelError(f"--model {source.spec}: config has no num_hidden_layers/hidden_size")
    return n_layer, n_embd


# Where transformers' model classes keep their decoder blocks, tried in this order.
KNOWN_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "language_model.model.layers",
)


def _module_at(model: torch.nn.Module, path: str) -> Any:
    """The attribute at dotted `path` below `model` (e.g. "model.layers"), or None."""
    module: Any = model
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_decoder_blocks(
    model: torch.nn.Module, n_layer: int, *, path: str | None = None
) -> torch.nn.ModuleList:
    """The model's list of `n_layer` decoder blocks: the ModuleList at `path` (a dotted
    attribute path such as "model.layers", from `--decoder-blocks`) when given, else the first
    of `KNOWN_BLOCK_PATHS` that holds one. Never a guess: a model that keeps its blocks
    elsewhere gets a `ModelError` that lists the ModuleLists of length `n_layer` it has and
    says how to name the right one."""
    if path is not None:
        module = _module_at(model, path)
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layer:
            return module
        found = "nothing" if module is None else f"a {type(module).__name__}"
        if isinstance(module, torch.nn.ModuleList):
            found += f" of length {len(module)}"
        raise ModelError(
            f"--decoder-blocks: {path!r} in {type(model).__name__} is {found}, "
            f"not a ModuleList of the {n_layer} decoder blocks"
        )
    for known in KNOWN_BLOCK_PATHS:
        module = _module_at(model, known)
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layer:
            return module
    lists = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layer
    ]
    hint = (
        f"its ModuleLists of length {n_layer} are: {', '.join(lists)}"
        if lists
        else f"it has no ModuleList of length {n_layer}"
    )
    raise ModelError(
        f"cannot find the {n_layer} decoder blocks in {type(model).__name__} at any of "
        f"{', '.join(KNOWN_BLOCK_PATHS)}; {hint}. Name them with --decoder-blocks PATH "
        "(e.g. --decoder-blocks model.layers)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def context_length(config: Any) -> int | None:
    """The model's context in tokens: `max_position_embeddings` of its (text) config, which
    transformers also fills from a GGUF file's `context_length`; None when it has none."""
    text_config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def describe_config(config: Any) -> dict[str, Any]:
    """A few config facts for the manifest."""
    text_config = getattr(config, "text_config", None) or config
    return {
        "architecture": str(getattr(text_config, "model_type", "unknown")),
        "architectures": list(getattr(config, "architectures", None) or []),
        "vocab_size": getattr(text_config, "vocab_size", None),
    }
