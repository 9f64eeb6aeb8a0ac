"""``python -m puppet_master.cli`` (used by ``accelerate launch -m puppet_master.cli train ...``)."""

from . import main

main()
