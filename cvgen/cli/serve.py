"""`cvgen serve`: the pack behind an OpenAI-compatible server, steered per request
(`cvgen.serve`)."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from pathlib import Path

import click

from cvgen.cli.common import one_line_errors
from cvgen.cli.steered import steered_model, steering_options
from cvgen.pack.page import render_page
from cvgen.pack.steering import PackSteering, Selection, selection_object
from cvgen.serve.service import ServeSettings

log = logging.getLogger(__name__)
API_KEY_VARIABLE = "CVGEN_API_KEY"


@click.command()
@steering_options(
    set_help="The default steering of requests that set none. Repeatable.",
    preset_help="A preset of the pack as the default steering.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback is reachable from other machines.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--api-key",
    default=None,
    envvar=API_KEY_VARIABLE,
    show_envvar=True,
    help="Require 'Authorization: Bearer KEY' on every endpoint (the page: HTTP Basic, KEY as password).",
)
@click.option(
    "--ctx-size",
    type=click.IntRange(64, 1 << 20),
    default=4096,
    show_default=True,
    help="Tokens of context (prompt and reply) a request may use.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1, 1 << 20),
    default=512,
    show_default=True,
    help="The largest max_tokens a request may ask, and the default.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1024, 1 << 30),
    default=1 << 20,
    show_default=True,
    help="Largest request body.",
)
@click.option(
    "--max-queue",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Requests that may wait; more get 503.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="CPU threads for llama.cpp (default: all cores).",
)
@click.option(
    "--gpu-layers",
    type=int,
    default=0,
    show_default=True,
    help="Blocks to offload to the GPU (a GPU build of llama.cpp).",
)
@one_line_errors
def serve(
    pack: Path,
    model: Path | None,
    host: str,
    port: int,
    api_key: str | None,
    assignments: tuple[str, ...],
    preset: str | None,
    allow_unsafe_scales: bool,
    ctx_size: int,
    max_tokens: int,
    max_body_bytes: int,
    max_queue: int,
    threads: int | None,
    gpu_layers: int,
) -> None:
    """Serve PACK's model with per-request control vectors (OpenAI-compatible API).

    A request sets {"control_vectors": {"language": 0.6}} or {"preset": "NAME"}; one that sets
    neither gets --set/--preset (else no steering). GET / is the pack's page with a "try it"
    panel; GET /v1/control-vectors lists the axes, safe scales and presets.
    """
    steered = steered_model(
        pack, model, assignments, preset, allow_unsafe_scales=allow_unsafe_scales
    )
    if api_key is not None and (not api_key.strip() or api_key != api_key.strip()):
        raise click.BadParameter(
            "the key is empty or begins or ends with a space", param_hint="--api-key"
        )
    settings = ServeSettings(
        ctx_size=ctx_size,
        max_tokens=max_tokens,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        threads=threads,
        gpu_layers=gpu_layers,
    )
    if not _loopback(host) and api_key is None:
        click.echo(
            f"warning: --host {host} is reachable from other machines and no --api-key is set",
            err=True,
        )
    run_server(
        steered.steering,
        steered.model,
        settings,
        steered.selection,
        host=host,
        port=port,
        api_key=api_key,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    steering: PackSteering,
    model_path: Path,
    settings: ServeSettings,
    default: Selection,
    *,
    host: str,
    port: int,
    api_key: str | None,
) -> None:
    """Load the model, then serve until SIGINT/SIGTERM; the model is freed on the way out."""
    import uvicorn

    from cvgen.serve.api import create_app
    from cvgen.serve.service import Service

    service = Service(steering, model_path, settings, default=default)
    try:
        page = functools.partial(
            render_page,
            steering.manifest,
            model_path=str(model_path),
            vector_dir=str(steering.pack),
            pack_label=str(steering.pack),
            serve={
                "model": service.model_id,
                "auth": api_key is not None,
                "max_tokens": settings.max_tokens,
            },
        )
        app = create_app(service, api_key=api_key, page=page, loopback=_loopback(host))
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", timeout_keep_alive=5,
            access_log=False,
        )  # fmt: skip
        server = uvicorn.Server(config)
        shown = selection_object(default) or "none"
        click.echo(
            f"cvgen serve: {service.model_id} with {len(steering.axes)} axes of {steering.pack} "
            f"on http://{host}:{port} (default steering: {shown}; "
            f"key: {'required' if api_key else 'none'}; pid {os.getpid()})",
            err=True,
        )
        server.run()
    finally:
        service.close()
