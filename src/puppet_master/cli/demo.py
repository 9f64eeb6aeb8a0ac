"""``puppet-master demo``: the interactive web demo."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import UserInputError
from ..options import DEMO, DragAnythingOptions, PuppetMasterOptions
from .options import (MODEL_DEFAULT_SHOWN, MODEL_HELP, THREADS, flag_names, method_flags, method_options, quiet_loading,
                      set_threads, unused_flags)


@method_flags([PuppetMasterOptions, DragAnythingOptions], DEMO)
def demo(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="DIR|HUB_ID", help=MODEL_HELP,
                                        show_default=MODEL_DEFAULT_SHOWN),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port to listen on."),
    device: str = typer.Option("cpu", "--device"),
    threads: Optional[int] = THREADS,
    draganything_model: Optional[str] = typer.Option(
        None, "--draganything-model", metavar="DIR|HUB_ID",
        help="Also offer DragAnything (a Method selector): a DragAnythingPipeline folder."),
    **flags,
) -> None:
    """Serve the click-to-drag demo in the browser.

    The sampling options (--steps, --guidance, ...) set the values the page starts with,
    each method's own by default; --size and --frames are fixed for the session.
    """
    from ..app.demo import launch
    from ..pipelines.loading import check_device

    offered = [PuppetMasterOptions] + ([DragAnythingOptions] if draganything_model is not None else [])
    foreign = unused_flags(flags, offered, DEMO)
    if foreign:
        raise UserInputError(f"{flag_names(foreign, [PuppetMasterOptions, DragAnythingOptions], DEMO)}: for "
                             "DragAnything only; add --draganything-model DIR or leave "
                             f"{'it' if len(foreign) == 1 else 'them'} out")
    starts = [method_options(cls, flags, DEMO) for cls in offered]
    set_threads(threads)
    check_device(device)
    quiet_loading()
    launch(model, host=host, port=port, device=device, options=starts[0],
           draganything_model=draganything_model, draganything_options=starts[1] if len(starts) > 1 else None)
