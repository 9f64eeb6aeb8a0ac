"""``puppet-master demo``: the interactive web demo."""

from __future__ import annotations

from typing import Optional

import typer

from .options import MODEL_DEFAULT_SHOWN, MODEL_HELP, THREADS, set_threads


def demo(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="DIR|HUB_ID", help=MODEL_HELP,
                                        show_default=MODEL_DEFAULT_SHOWN),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
    device: str = typer.Option("cpu", "--device"),
    steps: int = typer.Option(25, "--steps", min=1, help="Default sampling steps."),
    size: int = typer.Option(256, "--size", help="Model input size in pixels."),
    frames: int = typer.Option(14, "--frames", min=2),
    threads: Optional[int] = THREADS,
) -> None:
    """Serve the click-to-drag demo in the browser."""
    from ..app.demo import launch

    set_threads(threads)
    launch(model, host=host, port=port, device=device, steps=steps, size=size, frames=frames)
