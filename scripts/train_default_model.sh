#!/usr/bin/env bash
# Rebuild the embedded default model (src/puppet_master/assets/default-model) from scratch.
# Every stage is resumable: re-run the script after an interruption and it goes on.
# Status and measured times: docs/default-model.md. Recipe v2 (session 5): textured procedural
# assets (flat-shaded parts gave the optical-flow tracker, and so the flow error, nothing to
# follow) and an 8x-down VAE (the 16x one blurred the motion away). v3 (session 7): motion
# episodes in the training data. The step counts below are
# what a GPU run should use; on 2 CPU cores the UNet takes many sessions. On a GPU add
# `--device cuda` to cache-latents and run train under accelerate.
# To go on from the committed work-in-progress weights (training-state/default-model/) instead
# of starting over, follow training-state/default-model/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W=runs/default-model

# 1. textured procedural part-level assets -> Cycles renders -> curation -> drag samples
#    (train: seed 0; held-out test: seed 2, other assets)
#    Training assets get 3 motion episodes from the same rest pose and 3 samples per view
#    (one per episode): clips that share their first frame and differ in motion, so the
#    drags, not the picture, say what moves (session 7; docs/default-model.md).
puppet-master data build --out $W/data-train --num-assets 180 --views 1 --resolution 256 \
    --cycles-samples 8 --num-frames 14 --motion-episodes 3 --samples-per-view 3 --seed 0 --textures -q
puppet-master data build --out $W/data-test --num-assets 40 --views 1 --resolution 256 \
    --cycles-samples 8 --num-frames 14 --motion-episodes 3 --samples-per-view 3 --seed 2 --textures -q
#    the model card's held-out table uses the first episode of each asset (one clip per asset)
mkdir -p $W/data-test/samples-s00 && (cd $W/data-test/samples-s00 && ln -sf ../samples/*_s00.* .)

# 2. the image VAE (8x down, 4 latent channels), on training frames + scikit-image photos
puppet-master train-vae --data $W/data-train/samples --out $W/vae --steps 1000 --batch-size 8 --crop 128 \
    --channels 32,64,128,128 --latent-channels 4 --fg-weight 5 --chroma-weight 4

# 3. random drag UNet of SIZES["small"] + the trained VAE = the starting pipeline
[ -d $W/init ] || puppet-master random-model $W/init --size small --vae $W/vae/vae

# 4. latents of every training clip
puppet-master cache-latents --data $W/data-train/samples --model $W/init --out $W/latents-train --flip -q

# 5. the drag UNet (EDM, CFG dropout, EMA); resume=latest picks up the last checkpoint
#    stage 1: all clips, plain loss (learns the image); stage 2: from stage 1, clips that move,
#    motion-weighted loss (learns to follow the drags)
if [ -d $W/unet/checkpoints ]; then RESUME=(resume=latest); else RESUME=(); fi
[ -f $W/unet/pipeline/model_index.json ] || puppet-master train --config configs/default-model.yaml "${RESUME[@]}"
if [ -d $W/unet-stage2/checkpoints ]; then RESUME=(resume=latest); else RESUME=(); fi
[ -f $W/unet-stage2/pipeline/model_index.json ] || puppet-master train --config configs/default-model-stage2.yaml "${RESUME[@]}"
#    stage 3: from stage 2, the same data and loss with the drag-warped first-frame latent
#    switched on (session 13: the dense local cue the small UNet needs to follow drags on new assets)
if [ -d $W/unet-stage3/checkpoints ]; then RESUME=(resume=latest); else RESUME=(); fi
[ -f $W/unet-stage3/pipeline/model_index.json ] || puppet-master train --config configs/default-model-stage3.yaml "${RESUME[@]}"
#    stage 3b (session 14): 500 more steps from stage 3's EMA with a fresh optimizer at lr 1e-4
#    (the shipped weights: stage 3 stopped at step 1500 of its 1600-step schedule, then this run
#    with a 600-step cosine schedule stopped at its step-500 checkpoint)
if [ -d $W/unet-stage3b/checkpoints ]; then RESUME=(resume=latest); else RESUME=(); fi
puppet-master train --config configs/default-model-stage3.yaml \
    model.pretrained=$W/unet-stage3/pipeline model.components=$W/unet-stage3/pipeline \
    output_dir=$W/unet-stage3b max_steps=500 optim.lr=1e-4 optim.warmup_steps=20 checkpoint_every=100 seed=4 \
    "${RESUME[@]}"

# 6. ship as fp16 safetensors (<= 40 MB) and evaluate against the static baseline
python scripts/ship_default_model.py $W/unet-stage3b/pipeline
#    (autoencoder = the test videos through the VAE: the best any UNet with this VAE can score)
puppet-master evaluate --data $W/data-test/samples-s00 --method model --method warp --method static --method autoencoder --model default --out $W/eval-procedural
puppet-master evaluate --data ../shared/data/dragamove-test-dev --method model --method static --model default --out $W/eval-dev
