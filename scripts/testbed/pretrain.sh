#!/usr/bin/env bash
# The testbed model's pretraining on one GPU, end to end (docs/testbed.md):
#   render clips → sla2-prepare shards → train.py experiment=testbed_pretrain → sla2-export → eval.py on held-out prompts
#
#   scripts/testbed/pretrain.sh WORK_DIR [train.py overrides ...]
#   FROM=assets/testbed-t2v scripts/testbed/pretrain.sh WORK_DIR trainer.max_time=00:00:08:00   # continue the shipped model
#
# FROM: the folder to start from (default: a new untrained folder from sla2-testbed-model). Writes WORK_DIR/export
# (the trained diffusers folder), WORK_DIR/runs (checkpoints, csv losses) and WORK_DIR/eval (videos, eval.json, table.md).
# Resolution: HEIGHT×WIDTH pixels (default 128×256, the model's; 64×128 trains ~4× faster per sample and suits a
# first phase, the latents then [48, 17, HEIGHT/4, WIDTH/4]). Sizes: N_TRAIN clips (default 3000) and N_HELDOUT
# held-out prompts (default 64; EVAL_PROMPTS of them evaluated, 0 = no evaluation). EVAL_ARGS: more eval.py
# overrides (e.g. the model.flow_shift the training was given). PYTHON (default python3) runs every step.
# SEED (default 0) seeds the training clips: a continuing run given another seed trains on scenes the previous
# runs never saw. Re-running the same command resumes the run in WORK_DIR/runs: trainer.max_time is then the
# total over both runs.
set -euo pipefail
WORK=${1:?usage: scripts/testbed/pretrain.sh WORK_DIR [train.py overrides ...]}
shift
PY=${PYTHON:-python3}  # the interpreter with sla2-train installed (scripts/install.sh takes the same variable)
N_TRAIN=${N_TRAIN:-3000}
SEED=${SEED:-0}
N_HELDOUT=${N_HELDOUT:-64}
EVAL_PROMPTS=${EVAL_PROMPTS:-16}
WORKERS=${WORKERS:-$(nproc)}
read -r -a EVAL_ARGS <<< "${EVAL_ARGS:-}"
HEIGHT=${HEIGHT:-128}
WIDTH=${WIDTH:-256}
CLIP="clip.num_frames=17 clip.height=$HEIGHT clip.width=$WIDTH clip.fps=16"
LATENTS="model.latent_shape=[48,17,$((HEIGHT / 4)),$((WIDTH / 4))]"
mkdir -p "$WORK"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

MODEL=${FROM:-$WORK/init}
if [ -z "${FROM:-}" ] && [ ! -d "$MODEL" ]; then
  log "untrained folder"; "$PY" -m sla2_train.commands.testbed_model out="$MODEL"
fi
log "render"
"$PY" -m sla2_train.commands.testbed_data "$WORK/train" --num-videos "$N_TRAIN" --seed "$SEED" --split train \
  --height "$HEIGHT" --width "$WIDTH" --format npy --workers "$WORKERS" --no-progress
"$PY" -m sla2_train.commands.testbed_data "$WORK/heldout" --num-videos "$N_HELDOUT" --seed 1 --split heldout \
  --height "$HEIGHT" --width "$WIDTH" --format npy --workers "$WORKERS" --no-progress
for split in train heldout; do
  log "prepare $split"
  "$PY" -m sla2_train.commands.prepare videos="$WORK/$split/videos" captions="$WORK/$split/captions.jsonl" \
    out_dir="$WORK/shards-$split" encoders.model_path="$MODEL" encoders.max_text_len=64 $CLIP \
    decode_workers="$WORKERS" output.samples_per_shard=64 progress=false
done
log "train"
"$PY" train.py experiment=testbed_pretrain model.path="$MODEL" data.train_shards="$WORK/shards-train" \
  data.val_shards="$WORK/shards-heldout" output_root="$WORK/runs" "$LATENTS" "$@"
log "export"
rm -rf "$WORK/export"
"$PY" -m sla2_train.export.cli "$WORK/runs/testbed-pretrain-full-dense/checkpoints/last.ckpt" "$WORK/export" \
  --base "$MODEL" --dtype bfloat16
[ "$EVAL_PROMPTS" -gt 0 ] || { log "done (no evaluation)"; exit 0; }
log "evaluate"
"$PY" eval.py model=testbed model.path="$WORK/export" prompts="$WORK/heldout/prompts.txt" max_prompts="$EVAL_PROMPTS" \
  eval/metrics=testbed negative_prompt='' device=cuda attention.sparsity=0.97 output_root="$WORK/eval" logger=none \
  "$LATENTS" "${EVAL_ARGS[@]}"
log "done"
