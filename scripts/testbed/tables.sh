#!/usr/bin/env bash
# The paper's Tables 1 and 2 on a testbed folder, end to end (docs/results.md, "Attention table on the testbed
# model"): render clips → sla2-prepare shards → stage 1 per sparsity → stage 2 (QAT) per sparsity, and Table 2's
# two other stage 2s at the last sparsity → the attention table → eval.py videos, dense against each stage 2.
#
#   scripts/testbed/tables.sh WORK_DIR [train.py overrides for every training run ...]
#   STAGE1_ARGS=stage.objective.query_blocks=32 PARALLEL=4 scripts/testbed/tables.sh /tmp/tables  # shipped, 128×256
#   PRESET=testbed_64x128 PARALLEL=4 scripts/testbed/tables.sh /tmp/tables              # the recorded 64×128 run (~8 min)
#
# Settings (environment): PYTHON (python3); PRESET (testbed: the conf/model preset, which gives the folder, the
# size and the flow shift); MODEL (the preset's folder); HEIGHT×WIDTH pixels (the preset's); SPARSITIES ("0.9 0.95
# 0.97"; Table 2's variants at the last); STEPS (500, each training run's max_steps) and MAX_TIME (a dd:hh:mm:ss
# cap per run, empty = none; stage 1 fits α after its last step either way); N_TRAIN (512 clips, SEED 5);
# PROMPTS (11: the first 2 fit α and SLA's W, the rest are measured); EVAL_PROMPTS (32; 0 = no videos);
# EVAL_SPARSITIES (the last of SPARSITIES: the sparsities whose stage 2 also gets videos, from SPARSITIES);
# EVAL_SPLIT (heldout: the videos' prompts each hold a colour-shape-direction combination training never shows,
# a test of composition; train: new scenes of the training split's combinations, seed EVAL_SEED (2), what the
# model has learned to draw, where it follows far more prompts and a comparison has more to lose);
# PARALLEL (1: one training run at a time; several share a large GPU); EVAL_PARALLEL (1: the table and the video
# runs one at a time; several share the GPU, and their seconds per video are then not speed measurements);
# TRAINER (gpu) and DEVICE (cuda);
# TABLE_ARGS and EVAL_ARGS (more overrides for the table and for eval.py); REFIT_ALPHA=1 adds a stage 2 per
# sparsity whose α is fitted again after its last step (row `qat_alpha_refit`, and videos at EVAL_SPARSITIES);
# REFIT_ROUTER=1 runs stage 1 again at the last sparsity on stage 2's transformer (run stage2-router: init_from
# stage 2's checkpoint, router and α trained against that transformer's full attention, α fitted after the last
# step; row `qat_router_refit`, videos paired with stage 2's): stage 2 moves the queries and keys a learned router
# was fitted to, where the heuristic router pools whatever they have become;
# JOINT_ROUTER=1 adds a stage 2 at the last sparsity that trains the router too (run stage2-joint, stage=qat_router
# from stage 1, with STAGE2_ARGS and then JOINT_ARGS, e.g. stage.objective.router.distillation.query_blocks=8;
# row `qat_joint_router`, videos paired with stage 2's and the heuristic router's). Its step costs more than plain
# stage 2's (1.7× at the stage's defaults on the testbed), so under MAX_TIME it takes fewer steps: MAX_TIME= and
# STEPS=N give every run the same steps;
# TEACHER=1 adds two stage 2s at the last sparsity that also match a frozen dense copy of the DiT they start from
# (runs stage2-teacher from stage 1 and stage2-heuristic-teacher from the heuristic router, STAGE2_ARGS and then
# TEACHER_ARGS: by default the teacher's velocity at weight 1 and its guided velocity u + 5·(c − u) at weight 0.1,
# lit/teacher.py; rows `qat_teacher` and `heuristic_router_qat_teacher`, videos paired with the same router's
# stage 2 without the teacher and with each other): whether a stage 2 pulled towards what the dense model samples
# keeps the prompts a stage 2 fitted to the data alone loses;
# SWAP_ALPHA=1 adds two stage 2s at the last sparsity with the two routers' α swapped (scripts/testbed/swap_alpha.py,
# after the heuristic router's stage 1 as EVAL_STAGE1 trains it): stage2-swapalpha (the learned router with the α
# fitted to the heuristic's masks) and stage2-heuristic-swapalpha (the heuristic router with the learned one's α);
# rows `qat_heuristic_alpha` and `heuristic_router_qat_learned_alpha`, videos paired with each router's own stage 2
# and with the other router's: whether a router's stage 2 keeps or loses its prompts by its masks or by the share
# of the linear branch its α gives;
# BASE_MASKS=1 adds two stage 2s at the last sparsity whose layers take their blocks from the frozen base DiT
# (attention.selection=base, models/base_selection.py: each layer's router on the q, k the folder's own DiT makes
# densely for the same input, so the masks stay what they were before the fine-tune): stage2-basemask (the
# learned router's choice) and stage2-heuristic-basemask (the heuristic's), filmed with the same selection and
# paired with each router's own stage 2 and with each other; no table rows (the table scores a checkpoint's router
# on the fine-tuned DiT's own q, k, which these runs never used): whether a router's model keeps or loses its
# prompts by being fine-tuned together with masks that follow the fine-tune;
# EVAL_STAGE1=1 also films stage 1 alone (its router and α, the base DiT, low-bit sparse branch) at
# EVAL_SPARSITIES and pairs it with its stage 2 (whether a loss against dense comes from the router or from
# stage 2), and at the last sparsity films the same base DiT with the heuristic router and α fitted to it (run
# stage1-heuristic: α alone, one step, then the fit) and with the best-mass oracle's blocks and stage 1's α
# (attention.selection=bestmass), paired with stage 1: which router's blocks keep the prompts;
# EVAL_BESTMASS=1 films the two QAT stage 2s at the last sparsity (the learned router's and the heuristic's) again
# with the best-mass oracle's blocks (runs stage2-bestmass and stage2-heuristic-bestmass, attention.selection=
# bestmass), each paired with its own videos: whether a fine-tuned DiT is tied to the masks it was fine-tuned with;
# DENSE_WEIGHTS (checkpoint: each video row's dense reference is that run's fine-tuned transformer; base: the
# folder's own, as a paper compares);
# STAGE1_ARGS (overrides for the stage-1 runs only: the distillation loss's full-attention rows are O(rows · N)
# memory, ~50 GB a run at 128×256 with every query block; stage.objective.query_blocks=32 samples 32 of the 68
# query blocks a step, stage.objective.chunk_blocks=8 keeps all of them and evaluates 8 at a time); STAGE2_ARGS
# (overrides for every stage-2 run, e.g. ++trainer.max_time=00:00:04:00 for a longer stage 2 than stage 1, or
# '++stage.objective.teacher={_target_:sla2_train.lit.teacher.DenseTeacher,weight:0.5}');
# STAGE1_VAL (0; N > 0 renders N clips of the held-out combinations, seed 3, in scenes of their own, prepares them
# as validation shards and validates each stage-1 run on them every STAGE1_VAL_EVERY (50) steps: every layer's
# hard Top-k error against full attention, val/router/* in the run's CSV log, so that the router's held-out
# error can be read against its steps);
# PLAN=1 runs nothing and writes nothing: it prints every command the settings would run, one a line
# (`plan NAME COMMAND...`, shell-quoted, in the order the script starts them, `plan wait` where it waits for all
# that run; checkpoints and reports that do not exist yet as their globs), so that a set of options can be checked
# before a GPU is spent on it.
# Writes WORK_DIR/table (attention_table.md / .json), WORK_DIR/eval-<run> (videos, eval.json, table.md),
# WORK_DIR/compare-<run>-vs-<run>.md / .json (Table 2's videos paired by prompt and seed),
# WORK_DIR/breakdown-<colour|shape|direction|objects>.md / .json (prompt following per captioned object, by group),
# WORK_DIR/runs/<run> (checkpoints, csv logs) and WORK_DIR/logs/<run>.log. Re-running the same command (say after
# a time limit) resumes: training runs continue from their last.ckpt (finished ones end at once), the table from
# its finished passes, and the table and each run's videos are kept when the same command made them after every
# checkpoint.
set -euo pipefail
WORK=${1:?usage: scripts/testbed/tables.sh WORK_DIR [train.py overrides ...]}
shift
PY=${PYTHON:-python3}  # the interpreter with sla2-train installed (scripts/install.sh takes the same variable)
PRESET=${PRESET:-testbed}
# the preset's folder and pixel size (its latents are 4×4-pixel patches), unless given
read -r PRESET_MODEL PRESET_HEIGHT PRESET_WIDTH < <("$PY" -c '
import os, sys
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=os.path.abspath("conf"), version_base="1.3"):
    m = compose("config", overrides=["model=" + sys.argv[1]]).model
print(m.path, 4 * m.latent_shape[2], 4 * m.latent_shape[3])' "$PRESET")
MODEL=${MODEL:-$PRESET_MODEL}
[ -d "$MODEL" ] || { echo "tables.sh: no model folder '$MODEL' (PRESET=$PRESET; the 64×128 weights are restored by" \
  "scripts/testbed/restore_64x128_weights.sh)" >&2; exit 1; }
HEIGHT=${HEIGHT:-$PRESET_HEIGHT}
WIDTH=${WIDTH:-$PRESET_WIDTH}
read -r -a SPARSITIES <<< "${SPARSITIES:-0.9 0.95 0.97}"
STEPS=${STEPS:-500}
MAX_TIME=${MAX_TIME:-}
N_TRAIN=${N_TRAIN:-512}
SEED=${SEED:-5}
PROMPTS=${PROMPTS:-11}
EVAL_PROMPTS=${EVAL_PROMPTS:-32}
PARALLEL=${PARALLEL:-1}
EVAL_PARALLEL=${EVAL_PARALLEL:-1}
REFIT_ALPHA=${REFIT_ALPHA:-0}
REFIT_ROUTER=${REFIT_ROUTER:-0}
JOINT_ROUTER=${JOINT_ROUTER:-0}
TEACHER=${TEACHER:-0}
SWAP_ALPHA=${SWAP_ALPHA:-0}
BASE_MASKS=${BASE_MASKS:-0}
EVAL_STAGE1=${EVAL_STAGE1:-0}
EVAL_BESTMASS=${EVAL_BESTMASS:-0}
EVAL_SPLIT=${EVAL_SPLIT:-heldout}
EVAL_SEED=${EVAL_SEED:-2}
STAGE1_VAL=${STAGE1_VAL:-0}
STAGE1_VAL_EVERY=${STAGE1_VAL_EVERY:-50}
DENSE_WEIGHTS=${DENSE_WEIGHTS:-checkpoint}
TRAINER=${TRAINER:-gpu}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-$(nproc)}
read -r -a TABLE_ARGS <<< "${TABLE_ARGS:-}"
read -r -a EVAL_ARGS <<< "${EVAL_ARGS:-}"
read -r -a STAGE1_ARGS <<< "${STAGE1_ARGS:-}"
read -r -a STAGE2_ARGS <<< "${STAGE2_ARGS:-}"
read -r -a JOINT_ARGS <<< "${JOINT_ARGS:-}"
# the guided term needs the empty prompt's embedding, which every testbed folder carries (model_folder.py)
TEACHER_DEFAULT="stage.objective.teacher={_target_:sla2_train.lit.teacher.DenseTeacher,weight:1.0,\
guided_weight:0.1,guidance_scale:5.0,empty:$MODEL/empty_prompt.safetensors}"
read -r -a TEACHER_ARGS <<< "${TEACHER_ARGS:-$TEACHER_DEFAULT}"
LATENTS="model.latent_shape=[48,17,$((HEIGHT / 4)),$((WIDTH / 4))]"
LAST=${SPARSITIES[-1]}
read -r -a EVAL_SPARSITIES <<< "${EVAL_SPARSITIES:-$LAST}"
for s in "${EVAL_SPARSITIES[@]}"; do
  [[ " ${SPARSITIES[*]} " == *" $s "* ]] || { echo "tables.sh: EVAL_SPARSITIES has $s, not one of SPARSITIES (${SPARSITIES[*]})" >&2; exit 1; }
done
case "$EVAL_SPLIT" in
  heldout|train) ;;
  *) echo "tables.sh: EVAL_SPLIT must be heldout or train, got '$EVAL_SPLIT'" >&2; exit 1 ;;
esac
PLAN=${PLAN:-0}
log() { [ "$PLAN" != 0 ] || echo "[$(date -u +%H:%M:%S)] $*"; }
# `step NAME COMMAND...`: runs COMMAND, its output into the file STDOUT when that is set (with PLAN=1 prints
# COMMAND instead)
step() {
  local name=$1; shift
  if [ "$PLAN" != 0 ]; then printf 'plan %s' "$name"; printf ' %q' "$@"; echo
  elif [ -n "${STDOUT:-}" ]; then "$@" > "$STDOUT"
  else "$@"; fi
}
[ "$PLAN" != 0 ] || mkdir -p "$WORK/logs" "$WORK/runs"

log "render"
step render-train "$PY" -m sla2_train.commands.testbed_data "$WORK/train" --num-videos "$N_TRAIN" --seed "$SEED" \
  --split train --height "$HEIGHT" --width "$WIDTH" --format npy --workers "$WORKERS" --no-progress
step render-heldout "$PY" -m sla2_train.commands.testbed_data "$WORK/heldout" \
  --num-videos $((PROMPTS > EVAL_PROMPTS ? PROMPTS : EVAL_PROMPTS)) --seed 1 --split heldout --height "$HEIGHT" \
  --width "$WIDTH" --format npy --workers "$WORKERS" --no-progress
[ "$PLAN" != 0 ] || grep -v '^#' "$WORK/heldout/prompts.txt" | head -n "$PROMPTS" > "$WORK/table_prompts.txt"
EVAL_PROMPT_FILE="$WORK/heldout/prompts.txt"
if [ "$EVAL_SPLIT" = train ] && [ "$EVAL_PROMPTS" -gt 0 ]; then
  # at least 2: the chance level scores each video against another prompt of the file
  step render-prompts-train "$PY" -m sla2_train.commands.testbed_data "$WORK/prompts-train" \
    --num-videos $((EVAL_PROMPTS > 1 ? EVAL_PROMPTS : 2)) --seed "$EVAL_SEED" --split train --height "$HEIGHT" \
    --width "$WIDTH" --format npy --workers "$WORKERS" --no-progress
  EVAL_PROMPT_FILE="$WORK/prompts-train/prompts.txt"
fi
[ "$STAGE1_VAL" = 0 ] || step render-val "$PY" -m sla2_train.commands.testbed_data "$WORK/val" \
  --num-videos "$STAGE1_VAL" --seed 3 --split heldout --height "$HEIGHT" --width "$WIDTH" --format npy \
  --workers "$WORKERS" --no-progress
log "prepare"
prepare() {  # prepare RENDERED_DIR SHARD_DIR
  step "prepare-$(basename "$2")" "$PY" -m sla2_train.commands.prepare videos="$1/videos" \
    captions="$1/captions.jsonl" out_dir="$2" encoders.model_path="$MODEL" encoders.max_text_len=64 \
    clip.num_frames=17 clip.height="$HEIGHT" clip.width="$WIDTH" clip.fps=16 decode_workers="$WORKERS" \
    output.samples_per_shard=64 progress=false
}
prepare "$WORK/train" "$WORK/shards"
STAGE1_VAL_ARGS=()
if [ "$STAGE1_VAL" != 0 ]; then
  prepare "$WORK/val" "$WORK/val-shards"
  STAGE1_VAL_ARGS=(data.val_shards="$WORK/val-shards" trainer.val_check_interval="$STAGE1_VAL_EVERY"
                   trainer.check_val_every_n_epoch=null)
fi

COMMON=(model="$PRESET" model.path="$MODEL" data=webdataset data.train_shards="$WORK/shards" data.num_workers=2
        "$LATENTS" trainer="$TRAINER" logger=csv trainer.max_steps="$STEPS")
[ -z "$MAX_TIME" ] || COMMON+=("++trainer.max_time=$MAX_TIME")
ckpt() {
  if [ "$PLAN" != 0 ]; then echo "$WORK/runs/$1/*/checkpoints/last.ckpt"; else ls "$WORK/runs/$1"/*/checkpoints/last.ckpt; fi
}
# `background NAME LIMIT MARKER COMMAND...`: COMMAND in the background once fewer than LIMIT jobs run, its output
# in logs/NAME.log and its exit status in logs/NAME.rc; on success it writes the file MARKER (- for none) holding
# the command (see `fresh`). `drain` waits for every job and stops the script if one failed.
STARTED=()
background() {
  local name=$1 limit=$2 marker=$3; shift 3
  [ "$PLAN" = 0 ] || { step "$name" "$@"; return; }
  while [ "$(jobs -rp | wc -l)" -ge "$limit" ]; do wait -n || true; done
  STARTED+=("$name")
  ( rc=0; "$@" > "$WORK/logs/$name.log" 2>&1 || rc=$?; echo "$rc" > "$WORK/logs/$name.rc"
    [ "$rc" != 0 ] || [ "$marker" = - ] || echo "$*" > "$marker" ) &
}
train() {
  local name=$1; shift
  log "train $name"
  background "$name" "$PARALLEL" - "$PY" train.py "${COMMON[@]}" output_root="$WORK/runs/$name" "$@" "${EXTRA[@]}"
}
drain() {
  [ "$PLAN" = 0 ] || { echo "plan wait"; return 0; }
  wait
  local name failed=0
  for name in "${STARTED[@]}"; do
    [ "$(cat "$WORK/logs/$name.rc" 2>/dev/null)" = 0 ] || { log "$name failed: see $WORK/logs/$name.log"; failed=1; }
  done
  STARTED=()
  [ "$failed" = 0 ] || exit 1
}
# `variant RUN ROW OVERRIDES...`: trains a stage 2 beside stage 2 itself at the last sparsity, which then gets the
# attention table's row `ROW` and a video run of its own
VARIANTS=()
variant() {
  local run=$1 row=$2; shift 2
  VARIANTS+=("$run $row")
  train "$run" "$@"
}
# `base_variant RUN OVERRIDES...`: a stage 2 at the last sparsity on the base DiT's blocks (BASE_MASKS), filmed with
# them; no table row
BASE_VARIANTS=()
base_variant() {
  local run=$1; shift
  BASE_VARIANTS+=("$run")
  train "$run" "$@" attention.selection=base
}
EXTRA=("$@")

for s in "${SPARSITIES[@]}"; do
  train "stage1-$s" stage=distill attention.sparsity="$s" data.batch_size=4 "${STAGE1_VAL_ARGS[@]}" "${STAGE1_ARGS[@]}"
done
# the heuristic router's stage 1: the router left at identity, α fitted to its mask after one step
if [ "$EVAL_STAGE1" != 0 ] || [ "$SWAP_ALPHA" != 0 ]; then
  train "stage1-heuristic-$LAST" stage=distill attention.sparsity="$LAST" data.batch_size=4 "stage.train=[alpha]" \
    ++stage.allow_untrained_router=true "${STAGE1_ARGS[@]}" trainer.max_steps=1
fi
# α by the stage-1 recipe's fit (least absolute error), on the first batch (start) or after the last step (end)
calibrate() {
  echo "stage.calibrate_alpha={_target_:sla2_train.lit.alpha_calibration.AlphaCalibration,fit:{_target_:sla2_train.attention.distill.LeastAbsoluteFit},when:$1}"
}
STAGE2=(stage=qat data.batch_size=8 "${STAGE2_ARGS[@]}")  # before each run's own overrides, which win
# Table 2: the heuristic router with α and QAT (no stage 1); (TEACHER) the same with the dense teacher
AT_LAST=("${STAGE2[@]}" attention.sparsity="$LAST")
HEURISTIC=("${AT_LAST[@]}" stage.allow_untrained_router=true "$(calibrate start)")
variant "stage2-heuristic-$LAST" heuristic_router_qat "${HEURISTIC[@]}"
[ "$TEACHER" = 0 ] || variant "stage2-heuristic-teacher-$LAST" heuristic_router_qat_teacher "${HEURISTIC[@]}" \
  "${TEACHER_ARGS[@]}"
[ "$BASE_MASKS" = 0 ] || base_variant "stage2-heuristic-basemask-$LAST" "${HEURISTIC[@]}"
drain
for s in "${SPARSITIES[@]}"; do
  train "stage2-$s" "${STAGE2[@]}" attention.sparsity="$s" init_from="$(ckpt "stage1-$s")"
  [ "$REFIT_ALPHA" = 0 ] || train "stage2-refit-$s" "${STAGE2[@]}" attention.sparsity="$s" \
    init_from="$(ckpt "stage1-$s")" "$(calibrate end)"
done
STAGE1_LAST="init_from=$(ckpt "stage1-$LAST")"
# Table 2: stage 2 as a bf16 fine-tune of the same stage 1 (measured with the low-bit sparse branch)
variant "stage2-bf16-$LAST" bf16_finetune "${AT_LAST[@]}" "$STAGE1_LAST" stage.attention_mode.quant=false
# stage 2 with the router trained too (JOINT_ROUTER)
[ "$JOINT_ROUTER" = 0 ] || variant "stage2-joint-$LAST" qat_joint_router stage=qat_router data.batch_size=8 \
  "${STAGE2_ARGS[@]}" attention.sparsity="$LAST" "$STAGE1_LAST" "${JOINT_ARGS[@]}"
# the two routers' α swapped (SWAP_ALPHA)
if [ "$SWAP_ALPHA" != 0 ]; then
  [ "$PLAN" != 0 ] || mkdir -p "$WORK/swap"
  step swap-learned-router-heuristic-alpha "$PY" scripts/testbed/swap_alpha.py "$(ckpt "stage1-$LAST")" \
    "$(ckpt "stage1-heuristic-$LAST")" "$WORK/swap/learned-router-heuristic-alpha.ckpt"
  step swap-heuristic-router-learned-alpha "$PY" scripts/testbed/swap_alpha.py "$(ckpt "stage1-heuristic-$LAST")" \
    "$(ckpt "stage1-$LAST")" "$WORK/swap/heuristic-router-learned-alpha.ckpt"
  variant "stage2-swapalpha-$LAST" qat_heuristic_alpha "${AT_LAST[@]}" \
    init_from="$WORK/swap/learned-router-heuristic-alpha.ckpt"
  variant "stage2-heuristic-swapalpha-$LAST" heuristic_router_qat_learned_alpha "${AT_LAST[@]}" \
    init_from="$WORK/swap/heuristic-router-learned-alpha.ckpt" stage.allow_untrained_router=true
fi
# the learned router's blocks on the base DiT (BASE_MASKS)
[ "$BASE_MASKS" = 0 ] || base_variant "stage2-basemask-$LAST" "${AT_LAST[@]}" "$STAGE1_LAST"
# stage 2 with the dense teacher (TEACHER)
[ "$TEACHER" = 0 ] || variant "stage2-teacher-$LAST" qat_teacher "${AT_LAST[@]}" "$STAGE1_LAST" "${TEACHER_ARGS[@]}"
drain
# stage 1 again on stage 2's transformer (REFIT_ROUTER)
if [ "$REFIT_ROUTER" != 0 ]; then
  variant "stage2-router-$LAST" qat_router_refit stage=distill attention.sparsity="$LAST" data.batch_size=4 \
    init_from="$(ckpt "stage2-$LAST")" "${STAGE1_ARGS[@]}"
  drain
fi

join() { local IFS=,; echo "$*"; }
# `fresh MARKER COMMAND...`: true when MARKER records this very command and no checkpoint is newer than it, so
# what the command made is from the current weights and settings
fresh() {
  local marker=$1; shift
  [ "$PLAN" = 0 ] || return 1
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$*" ] && [ -z "$(find "$WORK/runs" -name last.ckpt -newer "$marker" -print -quit)" ]
}
S1=(); S2=(); R=(); REFIT_ROW=(); VARIANT_ROWS=()
for s in "${SPARSITIES[@]}"; do S1+=("$(ckpt "stage1-$s")"); S2+=("$(ckpt "stage2-$s")"); done
if [ "$REFIT_ALPHA" != 0 ]; then
  for s in "${SPARSITIES[@]}"; do R+=("$(ckpt "stage2-refit-$s")"); done
  REFIT_ROW=("+stage2_variants.qat_alpha_refit=[$(join "${R[@]}")]")
fi
for entry in "${VARIANTS[@]}"; do
  read -r run row <<< "$entry"
  VARIANT_ROWS+=("+stage2_variants.$row=[$(ckpt "$run")]")
done
TABLE=("$PY" -m sla2_train.attnbench.table model="$PRESET" model.path="$MODEL" prompts="$WORK/table_prompts.txt"
       calib_count=2 "$LATENTS" "sparsities=[$(join "${SPARSITIES[@]}")]" 'steps=[5,15,25]' device="$DEVICE"
       out="$WORK/table" "stage1=[$(join "${S1[@]}")]" "stage2=[$(join "${S2[@]}")]" "${VARIANT_ROWS[@]}"
       "${REFIT_ROW[@]}" "${TABLE_ARGS[@]}")
# The table and the videos run EVAL_PARALLEL at a time (1: one after the other, each video run's timing its own)
if fresh "$WORK/logs/table.done" "${TABLE[@]}"; then
  log "attention table: kept (made by the same command after the last checkpoint)"
else
  log "attention table"
  background table "$EVAL_PARALLEL" "$WORK/logs/table.done" "${TABLE[@]}"
fi
show_table() {
  drain
  [ "$PLAN" = 0 ] || return 0
  grep -A 200 '^| sparsity | method | sparse-only' "$WORK/table/attention_table.md" || true
}
[ "$EVAL_PROMPTS" -gt 0 ] || { show_table; log "done (no videos)"; exit 0; }
# Videos: stage 2 and its variants at the last sparsity, then stage 2 (and its α refit) at the other EVAL_SPARSITIES,
# then (EVAL_BESTMASS) the two QAT stage 2s with the oracle's blocks, then (EVAL_STAGE1) stage 1 alone at each,
# and the heuristic's and the oracle's blocks at the last; every one against its dense model (DENSE_WEIGHTS) with
# the low-bit sparse branch. Each entry: the videos' name, the run whose checkpoint they use, the sparsity, and an
# eval.py override (- for none).
VIDEO_RUNS=("stage2-$LAST stage2-$LAST $LAST -")
for entry in "${VARIANTS[@]}"; do read -r run _ <<< "$entry"; VIDEO_RUNS+=("$run $run $LAST -"); done
for run in "${BASE_VARIANTS[@]}"; do VIDEO_RUNS+=("$run $run $LAST attention.selection=base"); done
[ "$REFIT_ALPHA" = 0 ] || VIDEO_RUNS+=("stage2-refit-$LAST stage2-refit-$LAST $LAST -")
for s in "${EVAL_SPARSITIES[@]}"; do
  [ "$s" = "$LAST" ] && continue
  VIDEO_RUNS+=("stage2-$s stage2-$s $s -")
  [ "$REFIT_ALPHA" = 0 ] || VIDEO_RUNS+=("stage2-refit-$s stage2-refit-$s $s -")
done
[ "$EVAL_BESTMASS" = 0 ] || VIDEO_RUNS+=("stage2-bestmass-$LAST stage2-$LAST $LAST attention.selection=bestmass"
  "stage2-heuristic-bestmass-$LAST stage2-heuristic-$LAST $LAST attention.selection=bestmass")
if [ "$EVAL_STAGE1" != 0 ]; then
  for s in "${EVAL_SPARSITIES[@]}"; do VIDEO_RUNS+=("stage1-$s stage1-$s $s -"); done
  VIDEO_RUNS+=("stage1-heuristic-$LAST stage1-heuristic-$LAST $LAST -"
               "stage1-bestmass-$LAST stage1-$LAST $LAST attention.selection=bestmass")
fi
for entry in "${VIDEO_RUNS[@]}"; do
  read -r run from s extra <<< "$entry"
  EXTRA_EVAL=()
  [ "$extra" = - ] || EXTRA_EVAL=("$extra")
  EVAL=("$PY" eval.py model="$PRESET" model.path="$MODEL" prompts="$EVAL_PROMPT_FILE"
        max_prompts="$EVAL_PROMPTS" eval/metrics=testbed negative_prompt='' device="$DEVICE" attention.sparsity="$s"
        ckpt="$(ckpt "$from")" quant=true dense_weights="$DENSE_WEIGHTS" output_root="$WORK/eval-$run" logger=none
        "$LATENTS" "${EXTRA_EVAL[@]}" "${EVAL_ARGS[@]}")
  if fresh "$WORK/logs/eval-$run.done" "${EVAL[@]}"; then
    log "videos $run: kept"
  else
    log "videos $run"
    background "eval-$run" "$EVAL_PARALLEL" "$WORK/logs/eval-$run.done" "${EVAL[@]}"
  fi
done
show_table
for entry in "${VIDEO_RUNS[@]}"; do
  read -r run _ <<< "$entry"
  [ "$PLAN" = 0 ] || continue
  log "videos $run:"
  grep -E '^\| (Attention|dense|sla2)' "$WORK/logs/eval-$run.log" || true
done
# Table 2's video ablations, paired by prompt and seed (sla2-eval-compare): the learned router against the
# heuristic, QAT against the bf16 fine-tune, the α refit against stage 2's own α, the router refit against stage
# 2's router, the jointly trained router against stage 2's and the heuristic's, (TEACHER) each router's stage 2
# with the teacher against it without and the two with the teacher against each other, (SWAP_ALPHA) each router
# with the other's α against its own stage 2 and against the other router's, (EVAL_BESTMASS) each QAT stage 2
# with the oracle's blocks against its own and the two with the oracle's blocks against each other, (BASE_MASKS)
# each router's stage 2 on the base DiT's blocks against its own and the two against each other, and
# (EVAL_STAGE1) each stage 2 against the stage 1 it started from, the learned router's stage 1 against the
# heuristic's, and the oracle's blocks against the learned router's. Each run's newest report is the one this
# command made or kept.
newest() {
  if [ "$PLAN" != 0 ]; then echo "$WORK/eval-$1/eval/*/*/eval.json"; return; fi
  ls -t "$WORK/eval-$1"/eval/*/*/eval.json | head -n 1
}
paired() {
  local out="$WORK/compare-$1-vs-$2"
  STDOUT="$out.md" step "compare-$1-vs-$2" "$PY" -m sla2_train.evaluation.compare "$(newest "$1")" "$(newest "$2")" \
    --out "$out.json"
  [ "$PLAN" = 0 ] || return 0
  log "videos $1 − $2, paired:"
  grep '^|' "$out.md"
}
paired "stage2-$LAST" "stage2-heuristic-$LAST"
paired "stage2-$LAST" "stage2-bf16-$LAST"
[ "$REFIT_ALPHA" = 0 ] || paired "stage2-refit-$LAST" "stage2-$LAST"
[ "$REFIT_ROUTER" = 0 ] || paired "stage2-router-$LAST" "stage2-$LAST"
if [ "$JOINT_ROUTER" != 0 ]; then
  paired "stage2-joint-$LAST" "stage2-$LAST"
  paired "stage2-joint-$LAST" "stage2-heuristic-$LAST"
fi
if [ "$SWAP_ALPHA" != 0 ]; then
  paired "stage2-swapalpha-$LAST" "stage2-$LAST"
  paired "stage2-heuristic-swapalpha-$LAST" "stage2-heuristic-$LAST"
  paired "stage2-swapalpha-$LAST" "stage2-heuristic-$LAST"
  paired "stage2-heuristic-swapalpha-$LAST" "stage2-$LAST"
fi
if [ "$BASE_MASKS" != 0 ]; then
  paired "stage2-basemask-$LAST" "stage2-$LAST"
  paired "stage2-heuristic-basemask-$LAST" "stage2-heuristic-$LAST"
  paired "stage2-basemask-$LAST" "stage2-heuristic-basemask-$LAST"
fi
if [ "$TEACHER" != 0 ]; then
  paired "stage2-teacher-$LAST" "stage2-$LAST"
  paired "stage2-heuristic-teacher-$LAST" "stage2-heuristic-$LAST"
  paired "stage2-teacher-$LAST" "stage2-heuristic-teacher-$LAST"
fi
if [ "$EVAL_BESTMASS" != 0 ]; then
  paired "stage2-bestmass-$LAST" "stage2-$LAST"
  paired "stage2-heuristic-bestmass-$LAST" "stage2-heuristic-$LAST"
  paired "stage2-bestmass-$LAST" "stage2-heuristic-bestmass-$LAST"
fi
if [ "$EVAL_STAGE1" != 0 ]; then
  for s in "${EVAL_SPARSITIES[@]}"; do paired "stage2-$s" "stage1-$s"; done
  paired "stage1-$LAST" "stage1-heuristic-$LAST"
  paired "stage1-bestmass-$LAST" "stage1-$LAST"
fi
# Which captioned objects each run keeps: every video run (dense from the first) by colour, shape, direction and
# the caption's object count (sla2-testbed-breakdown)
REPORTS=()
for entry in "${VIDEO_RUNS[@]}"; do read -r run _ <<< "$entry"; REPORTS+=("$(newest "$run")"); done
for by in colour shape direction objects; do
  STDOUT="$WORK/breakdown-$by.md" step "breakdown-$by" "$PY" -m sla2_train.testbed.breakdown "${REPORTS[@]}" \
    --by "$by" --out "$WORK/breakdown-$by.json"
done
[ "$PLAN" = 0 ] || exit 0
log "prompt following by colour (right / present, per object):"
cat "$WORK/breakdown-colour.md"
log "done"
