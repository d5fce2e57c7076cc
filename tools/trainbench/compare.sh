#!/usr/bin/env bash
# Times whole training steps of e2mcvk (trainbench) and of PyTorch
# (torch_train.py) on the same configuration, alternately, --runs times each,
# and prints every figure (images/s; median of the steps of each run).
#
# Usage: tools/trainbench/compare.sh [--runs N] [--cuda] [--device N] -- TRAINBENCH/TORCH FLAGS
#   e.g. tools/trainbench/compare.sh --runs 3 -- --arch resnet18 --width 16 --small-stem \
#          --image-size 32 --batch-size 64 --mlp 512-512-512 --steps 5 --warmup 2
# Environment: TRAINBENCH names a prebuilt trainbench binary; PYTHON the
# interpreter with PyTorch (default /usr/bin/python3, Debian's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-/usr/bin/python3}
runs=3
torch_extra=()
vk_extra=()
while (($#)); do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --cuda) torch_extra+=(--cuda); shift ;;
    --device) vk_extra+=(--device "$2"); shift 2 ;;
    --) shift; break ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
bin=${TRAINBENCH:-}
if [ -z "$bin" ]; then
  bin=$(mktemp -d)/trainbench
  (cd "$root" && go build -o "$bin" ./tools/trainbench)
fi
for ((r = 1; r <= runs; r++)); do
  echo "== run $r $(date -u +%H:%M:%S)"
  "$bin" "${vk_extra[@]}" "$@"
  "$python" "$here/torch_train.py" "${torch_extra[@]}" "$@"
done
