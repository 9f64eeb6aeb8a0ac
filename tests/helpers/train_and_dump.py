"""Train a tiny config and dump the final UNet parameters (run directly or under torchrun).

    python tests/helpers/train_and_dump.py OUT_DIR BATCH_SIZE [override ...]
"""

import sys
from pathlib import Path

import torch

from puppet_master.training import Trainer, load_config

TINY_UNET = [
    "model.unet.block_out_channels=[32, 64, 64, 64]", "model.unet.layers_per_block=1",
    "model.unet.cross_attention_dim=32", "model.unet.num_attention_heads=[1, 2, 2, 2]",
    "model.unet.pos_embed_dim=16", "model.unet.drag_embedder_out_channels=[16, 32, 32]",
]


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    if "--float64" in sys.argv:
        # float64 removes float32 reduction-order noise, which random-init nets amplify over steps
        sys.argv.remove("--float64")
        torch.set_default_dtype(torch.float64)
    cfg = load_config(None, TINY_UNET + [
        f"output_dir={out}", f"data.batch_size={batch}", "data.num_frames=3", "max_steps=3", "log_with=none",
        "use_ema=false", "export_pipeline=false", "checkpoint_every=1000", "optim.lr=1e-3",
        "data.sources=[{type: synthetic, num_clips: 8, latent_size: 8, embedding_dim: 32}]",
    ] + sys.argv[3:])
    from accelerate.utils import set_seed

    from puppet_master.training.trainer import build_unet

    set_seed(cfg.seed)  # the trainer builds the same initial UNet from the same seed
    initial = {k: v.detach().clone() for k, v in build_unet(cfg).state_dict().items()}
    trainer = Trainer(cfg, progress=False)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        state = {k: v.detach().cpu() for k, v in result.unet.state_dict().items()}
        torch.save({"losses": result.losses, "state": state, "initial": initial, "processes": trainer.accelerator.num_processes},
                   out / "result.pt")


if __name__ == "__main__":
    main()
