#!/usr/bin/env bash
# The multi-GPU runs on one host with two GPUs, one command: DDP and FSDP training of both stages on the Wan2.1-1.3B
# architecture (random weights) with a resume each, the FSDP stage 1 → stage 2 → sla2-export → eval.py chain, and
# throughput (samples/s, peak memory per GPU) on 1 and 2 GPUs for dense, SLA2 97% bf16 and SLA2 97% QAT.
#
#   scripts/multigpu/run.sh OUT_DIR [SHARDS_DIR]      # 2 GPUs; SHARDS_DIR: latent shards at [16, 21, 60, 104]
#   DRY=1 scripts/multigpu/run.sh OUT_DIR             # the same steps on CPU processes (gloo, tiny model)
#
# Every step prints its command and records its exit code; a failing step does not stop the later ones.
# OUT_DIR gets steps.tsv (step, rc, seconds, command), logs/<step>.log, runs/ (the training output folders),
# results.json and results.md (scripts/multigpu/summarize.py). docs/multigpu.md says what each step shows.
# Variables: DRY=1 (CPU), NGPU (2), STEPS (the stage runs' steps per epoch, 4), TPUT_STEPS (8), TPUT_WARMUP (3),
# SKIP_14B=1, PYTHON (python3).
set -u -o pipefail

if [ $# -lt 1 ]; then
    echo "usage: [DRY=1] $0 OUT_DIR [SHARDS_DIR]" >&2
    exit 2
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
SHARDS=${2:-}
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO/src:$REPO/kernels${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HYDRA_FULL_ERROR=1
# NVLink multicast (NVLS) stays off in NCCL, PyTorch's symmetric memory and NVSHMEM: on a shared host a program
# that sets up multicast can take the host's GPUs out of service, and data-parallel training does not need it.
# NCCL_CUMEM_ENABLE=0 keeps NCCL off the cuMem allocation path multicast buffers come from.
export NCCL_NVLS_ENABLE=0 NCCL_CUMEM_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

DRY=${DRY:-0}
NGPU=${NGPU:-2}
STEPS=${STEPS:-4}              # one epoch = STEPS optimizer steps; each stage run trains one epoch, then resumes for one more
TPUT_STEPS=${TPUT_STEPS:-8}    # throughput runs: optimizer steps, the first TPUT_WARMUP untimed
TPUT_WARMUP=${TPUT_WARMUP:-3}
if [ "$DRY" = 1 ]; then
    MODEL=(model=tiny)
    LATENT=(4 3 14 18); TEXT_DIM=32; TEXT_LEN=16
    DDP=ddp_cpu; FSDP=fsdp_cpu; EVAL_DEVICE=cpu
    STEPS=2; TPUT_STEPS=3; TPUT_WARMUP=1
    export OMP_NUM_THREADS=1
else
    MODEL=(model=wan2_1 model.random_init=true)
    LATENT=(16 21 60 104); TEXT_DIM=4096; TEXT_LEN=512
    DDP=ddp; FSDP=fsdp; EVAL_DEVICE=cuda
fi
# Fresh runs every time: a training folder left from an earlier call would be resumed instead of trained.
rm -rf "$OUT/runs" "$OUT/export" "$OUT/logs"
mkdir -p "$OUT/logs" "$OUT/runs"
: > "$OUT/steps.tsv"

step() {  # step NAME COMMAND...: print it, run it (output to the console and logs/NAME.log), record rc and time
    local name=$1; shift
    echo
    echo "=== [$name] $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$OUT/logs/$name.log"
    local rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$*" >> "$OUT/steps.tsv"
    echo "=== [$name] rc=$rc in $((SECONDS - start)) s"
}

train() {  # train NPROC ARGS...: train.py under torchrun with NPROC processes (one per GPU)
    local nproc=$1; shift
    "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" "$REPO/train.py" "${MODEL[@]}" \
        trainer.devices="$nproc" logger=csv callbacks.progress.refresh_rate=0 \
        data=webdataset data.train_shards="$SHARDS" data.batch_size=1 data.num_workers=2 "$@"
}

# ---- shards ----------------------------------------------------------------------------------------------------
if [ -z "$SHARDS" ]; then
    SHARDS=$OUT/shards
    # 32 samples in 16 shards: whole shards for each of 2 ranks × 2 workers, and an epoch of 2 × STEPS samples fits
    [ -f "$SHARDS/index.json" ] || step shards "$PY" -m sla2_train.commands.make_synthetic "$SHARDS" \
        --num-samples 32 --samples-per-shard 2 --latent-shape "${LATENT[@]}" --text-dim "$TEXT_DIM" \
        --max-text-len "$TEXT_LEN"
fi

# ---- stage 1 and stage 2 under DDP and FSDP, each resumed once ---------------------------------------------------
# data.epoch_length = STEPS: the first run ends at an epoch boundary with its checkpoint, the second resumes from it
# (prints "resuming from") and trains the next epoch; the sample-key log then holds two whole epochs per rank.
KEYS=("callbacks=[default,sample_keys,throughput]" callbacks.throughput.warmup_steps=1 data.epoch_length="$STEPS")
for strategy in "$DDP" "$FSDP"; do
    root=$OUT/runs/$strategy
    for stage in distill qat; do
        args=(trainer="$strategy" stage=$stage output_root="$root" run_name="$strategy-$stage" "${KEYS[@]}")
        [ $stage = qat ] && args+=(init_from="$root/$strategy-distill/checkpoints/last.ckpt")
        step "$strategy-$stage" train "$NGPU" "${args[@]}" trainer.max_steps="$STEPS"
        step "$strategy-$stage-resumed" train "$NGPU" "${args[@]}" trainer.max_steps=$((2 * STEPS))
    done
done

# ---- the FSDP checkpoint chain: stage 2's sharded checkpoint → a diffusers folder → eval.py -----------------------
step export "$PY" -m sla2_train.export.cli "$OUT/runs/$FSDP/$FSDP-qat/checkpoints/last.ckpt" "$OUT/export/fsdp-qat"
step eval "$PY" "$REPO/eval.py" "${MODEL[@]}" ckpt="$OUT/export/fsdp-qat" device="$EVAL_DEVICE" logger=none \
    max_prompts=1 num_inference_steps=2 output_root="$OUT/runs/eval" \
    $([ "$DRY" = 1 ] || echo eval/random_model=wan2_1)

# ---- throughput: dense, SLA2 97% bf16, SLA2 97% QAT on 1 and NGPU GPUs (stage 2's training step) -----------------
TPUT=("callbacks=[default,throughput]" callbacks.throughput.warmup_steps="$TPUT_WARMUP" trainer.max_steps="$TPUT_STEPS"
      data.epoch_length="$TPUT_STEPS" stage=qat stage.allow_untrained_router=true resume=false
      callbacks.checkpoint.save_last=false)
declare -A VARIANT=(
    [dense]="attention=full stage.train=[dit] ~stage.group_lr.alpha"
    [sla2-bf16]="attention=sla2 attention.sparsity=0.97 stage.attention_mode.quant=false"
    [sla2-qat]="attention=sla2 attention.sparsity=0.97 stage.attention_mode.quant=true"
)
for n in 1 "$NGPU"; do
    for variant in dense sla2-bf16 sla2-qat; do
        # shellcheck disable=SC2086  # the variant's overrides are words
        step "tput-$variant-${n}gpu" train "$n" trainer="$DDP" ${VARIANT[$variant]} \
            output_root="$OUT/runs/tput-${n}gpu" run_name="$variant" "${TPUT[@]}"
    done
done

# ---- the 14B architecture's stage-2 step under FSDP with activation checkpointing, if it fits -------------------
if [ "$DRY" != 1 ] && [ "${SKIP_14B:-0}" != 1 ]; then
    shards14=$OUT/shards-14b
    [ -f "$shards14/index.json" ] || step shards-14b "$PY" -m sla2_train.commands.make_synthetic "$shards14" \
        --num-samples 8 --samples-per-shard 2 --latent-shape 16 21 90 160 --text-dim 4096 --max-text-len 512
    MODEL=(model=wan2_1_14b model.random_init=true); SHARDS=$shards14  # the last training step: no need to restore
    step "tput-14b-sla2-qat-fsdp-${NGPU}gpu" train "$NGPU" trainer="$FSDP" ${VARIANT[sla2-qat]} \
        output_root="$OUT/runs/tput-${NGPU}gpu" run_name=14b-sla2-qat-fsdp "${TPUT[@]}" \
        trainer.max_steps=4 data.epoch_length=4 callbacks.throughput.warmup_steps=2
fi

step summary "$PY" "$REPO/scripts/multigpu/summarize.py" "$OUT"
