#!/usr/bin/env bash
# The testbed model's earlier weights, trained mostly at 64×128 with flow shift 3 (docs/testbed.md), on which the
# 64×128 tables in docs/results.md were measured. They are kept in the repository's history rather than its tree
# (one folder of weights is enough for every checkout to carry): this restores that folder into DEST (default
# assets/testbed-t2v-64x128, which git ignores), where model=testbed_64x128 loads them.
#
#   scripts/testbed/restore_64x128_weights.sh [DEST]
set -euo pipefail
REV=a60a98084bb993c391cf806a47a8737ca307c5d8  # the last commit whose assets/testbed-t2v held these weights
SHA256=aa213f9ce4cdcd83a00bdb5bf26e2620d4c3db68d06296f44915ce2585b0111a  # of their transformer's safetensors
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=${1:-$ROOT/assets/testbed-t2v-64x128}
if ! git -C "$ROOT" cat-file -e "$REV^{commit}" 2>/dev/null; then
  echo "restore_64x128_weights.sh: commit $REV is not in this clone's history (a shallow clone? git fetch --unshallow)" >&2
  exit 1
fi
mkdir -p "$DEST"
git -C "$ROOT" archive "$REV" assets/testbed-t2v | tar -x --strip-components=2 -C "$DEST"
echo "$SHA256  $DEST/transformer/diffusion_pytorch_model.safetensors" | sha256sum -c --quiet
echo "the 64×128 testbed weights are in $DEST"
