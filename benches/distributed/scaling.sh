#!/usr/bin/env bash
# Data-parallel scaling on one machine: the same training run as one process
# with 2 compute threads and as 2 MPI ranks with 1 thread each (same global
# batch, seed and epochs). Prints wall seconds and the mean training
# samples/s of the epochs after the first, alternating the two forms REPS
# times (this machine is shared and noisy: compare within a pair).
#   benches/distributed/scaling.sh [MODEL...]   (default: shapes and mmoe)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BIN=${BIN:-target/release/mtl}
EPOCHS=${EPOCHS:-4}
REPS=${REPS:-2}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(models/shapes.mtl models/mmoe.mtl)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
sps() { # mean samples/s of epochs 2.. from a run's statistics
  python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['epochs'][1:]; print(round(sum(x['samples_per_sec'] for x in e)/len(e)))" "$1/training_statistics.json"
}
printf '%-22s %-18s %8s %10s\n' model form wall_s samples/s
for m in "${MODELS[@]}"; do
  name=$(basename "$m" .mtl)
  # Data generated once, outside the timing.
  "$BIN" train "$m" --epochs 1 --out "$OUT/warm_$name" --overwrite --quiet
  for r in $(seq "$REPS"); do
    s=$(date +%s.%N)
    RAYON_NUM_THREADS=2 "$BIN" train "$m" --epochs "$EPOCHS" --out "$OUT/one" --overwrite --quiet
    e=$(date +%s.%N)
    printf '%-22s %-18s %8.2f %10s\n' "$name" "1 rank x 2 threads" "$(echo "$e - $s" | bc)" "$(sps "$OUT/one")"
    s=$(date +%s.%N)
    mpirun -np 2 --bind-to none -x RAYON_NUM_THREADS=1 "$BIN" train "$m" --epochs "$EPOCHS" --out "$OUT/two" --overwrite --quiet --distributed
    e=$(date +%s.%N)
    printf '%-22s %-18s %8.2f %10s\n' "$name" "2 ranks x 1 thread" "$(echo "$e - $s" | bc)" "$(sps "$OUT/two")"
  done
done
