"""Where a model comes from: a local Hugging Face folder, a hub id, or a local .gguf file.

`resolve_model_source` classifies a `--model` spec into a `ModelSource`; nothing is loaded.
`ModelSource.identity()` is a content key for the state store: it changes when the weights do,
without hashing a whole multi-gigabyte file. `hub_is_offline` probes, once per process, whether
the hub can be reached, so that a hub id fails at once, in one line, when it cannot.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.common.errors import CvgenError
from cvgen.common.files import not_regular_message

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


def offline_load_kwargs(source: ModelSource) -> dict[str, Any]:
    """For a hub id while the hub cannot be reached: `local_files_only` when the cache holds
    it, else a one-line `ModelError`; nothing for a local source or a reachable hub."""
    if source.kind != "hub" or not hub_is_offline():
        return {}
    if _hub_cached(source.directory):
        return {"local_files_only": True}
    raise ModelError(f"offline: cannot fetch {source.directory}; pass a local folder or .gguf")
