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
    draganything_model: Optional[str] = typer.Option(
        None, "--draganything-model", metavar="DIR|HUB_ID",
        help="Also offer DragAnything (a Method selector): a DragAnythingPipeline folder."),
    resolution: str = typer.Option("576x320", "--resolution", metavar="WxH", help="DragAnything: the size it works at."),
) -> None:
    """Serve the click-to-drag demo in the browser."""
    from ..app.demo import launch
    from .draganything import parse_resolution

    set_threads(threads)
    launch(model, host=host, port=port, device=device, steps=steps, size=size, frames=frames,
           draganything_model=draganything_model, draganything_resolution=parse_resolution(resolution))
