#!/usr/bin/env bash
# The recipe of the embedded default model (src/puppet_master/assets/default-model), from an
# empty folder to the shipped weights: the same data, steps, learning-rate schedules and seeds
# as the weights in the package (their provenance: src/puppet_master/assets/default-model/training.json;
# explained in recipes/default-model/README.md). Run it from anywhere:
#
#   bash recipes/default-model/train.sh            # everything lands in runs/default-model/
#   DRY_RUN=1 bash recipes/default-model/train.sh  # print the commands instead of running them
#
# Every stage is resumable: re-run the script after an interruption and it goes on from the
# last checkpoint; a finished stage (its pipeline/ folder exists) is skipped. On 2 CPU cores the
# whole recipe takes about 7 hours; on a GPU add `--device cuda` to cache-latents and run
# `puppet-master train` under `accelerate launch`. The configs say `mixed_precision: bf16`
# (set `mixed_precision=no` on CPUs without bf16).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=runs/default-model
DRY_RUN=${DRY_RUN:-}

run() {  # run a command, or print it with DRY_RUN=1
  if [ -n "$DRY_RUN" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

stage() {  # stage OUTPUT_DIR CONFIG [key=value ...]: one UNet training run, resumed if it was interrupted
  local out=$1 config=$2
  shift 2
  if [ -z "$DRY_RUN" ] && [ -f "$out/pipeline/model_index.json" ]; then return 0; fi
  local resume=()
  if [ -d "$out/checkpoints" ]; then resume=(resume=latest); fi
  run puppet-master train --config "$config" "output_dir=$out" "$@" "${resume[@]}"
}

# 1. Data: textured procedural part-level assets -> Cycles renders -> curation -> drag samples.
#    Each training asset has 3 motion episodes from the same rest pose and one sample per episode:
#    clips that share their first frame and differ in motion, so only the drags say what moves.
#    Training split: seed 0 (148 of 180 assets kept, 434 clips); held-out split: seed 2 (33 of 40, 99 clips).
run puppet-master data build --out $W/data-train --num-assets 180 --views 1 --resolution 256 \
    --cycles-samples 8 --num-frames 14 --motion-episodes 3 --samples-per-view 3 --seed 0 --textures -q
run puppet-master data build --out $W/data-test --num-assets 40 --views 1 --resolution 256 \
    --cycles-samples 8 --num-frames 14 --motion-episodes 3 --samples-per-view 3 --seed 2 --textures -q
#    the held-out evaluation uses the first episode of each asset (one clip per asset)
if [ -z "$DRY_RUN" ]; then
  mkdir -p $W/data-test/samples-s00 && (cd $W/data-test/samples-s00 && ln -sf ../samples/*_s00.* .)
fi

# 2. The image VAE (8x down, 4 latent channels), on the training frames plus scikit-image's photographs.
run puppet-master train-vae --data $W/data-train/samples --out $W/vae --steps 1000 --batch-size 8 --crop 128 \
    --channels 32,64,128,128 --latent-channels 4 --fg-weight 5 --chroma-weight 4

# 3. The starting pipeline: a random drag UNet of SIZES["small"] with the trained VAE.
if [ -n "$DRY_RUN" ] || [ ! -d $W/init ]; then run puppet-master random-model $W/init --size small --vae $W/vae/vae; fi

# 4. Latents of every training clip and of its mirror image (868).
run puppet-master cache-latents --data $W/data-train/samples --model $W/init --out $W/latents-train --flip -q

# 5. The drag UNet (EDM loss, CFG dropout, EMA). Each stage starts from the previous stage's EMA
#    weights (its pipeline/ export). A stage with stop_at_step ends there while its learning-rate
#    schedule keeps the length of max_steps; a stage with a fresh optimizer restarts the schedule.
#    stage 1: all clips, plain loss: 450 steps, constant lr 5e-4 (learns the image)
stage $W/unet recipes/default-model/configs/default-model.yaml
#    stage 2: the clips that move, motion-weighted loss: 3600 steps of an 8000-step cosine schedule
stage $W/unet-stage2 recipes/default-model/configs/default-model-stage2.yaml
#    stage 2b: 900 more steps with a fresh optimizer at lr 2e-4 (same 8000-step schedule length)
stage $W/unet-stage2b recipes/default-model/configs/default-model-stage2.yaml \
    model.pretrained=$W/unet-stage2/pipeline model.components=$W/unet-stage2/pipeline \
    optim.lr=2.0e-4 stop_at_step=900
#    stage 3: the drag-warped first-frame latent switched on: 1500 steps of a 1600-step cosine schedule
stage $W/unet-stage3 recipes/default-model/configs/default-model-stage3.yaml
#    stage 3b: 500 steps of a fresh 600-step cosine schedule at lr 1e-4, warm-up 20, seed 4
stage $W/unet-stage3b recipes/default-model/configs/default-model-stage3.yaml \
    model.pretrained=$W/unet-stage3/pipeline model.components=$W/unet-stage3/pipeline \
    optim.lr=1.0e-4 optim.warmup_steps=20 max_steps=600 stop_at_step=500 seed=4

#    stage 4: consistency distillation of stage 3b into a 4-step student without CFG (not in the
#    paper; docs/design.md §5): 150 steps, lr 2e-4 constant after 10 warm-up steps, seed 5
stage $W/student recipes/default-model/configs/default-model-distill.yaml

# 6. Ship the student as fp16 safetensors (<= 40 MB) and evaluate against the baselines
#    (autoencoder = the test videos through the VAE: the best any UNet with this VAE can score).
#    The sampling settings not in the paper are those of model_index.json; the student's own
#    (3 steps, no CFG, its 2 >= σ >= 0.045 scheduler) come with its pipeline folder. Chroma anchoring
#    (8 px) was chosen on Drag-a-Move dev (docs/design.md §5).
# a tiny VAE in the same latent space: decodes the frames several times faster than the VAE above
run puppet-master distil-vae --data $W/data-train/samples --teacher $W/student/pipeline --out $W/tiny-vae \
    --steps 2000 --batch-size 8 --crop 128 --encoder teacher --decoder-channels 32

run python recipes/default-model/ship_default_model.py --warp-init-sigma 2 --detail-transfer-radius 1 \
    --tie-first-frame on --tie-release-sigma 0.01 --chroma-anchor-sigma 8 --vae $W/tiny-vae/vae $W/student/pipeline
run puppet-master evaluate --data $W/data-test/samples-s00 --method model --method warp --method static \
    --method autoencoder --model default --out $W/eval-procedural
run puppet-master evaluate --data ../shared/data/dragamove-test-dev --method model --method warp --method static \
    --model default --out $W/eval-dev
