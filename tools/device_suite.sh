#!/usr/bin/env bash
# The GPU figures in one go (at most 8 minutes on one H100/H200):
#   1. per domain, at the real-scale sizes the recipes' headers give: steps/s, model FLOPs
#      utilisation (FLOPs counted by torch.utils.flop_counter, bf16 peak of the card), peak memory
#      and the trainer/raw step-time ratio (tools/bench_throughput.py --scale real --flops);
#   2. the text transformer again with train.compile=true;
#   3. a short binarized Fashion-MNIST 28×28 run, edm vs infonoise, with the comparison report.
#
#   tools/device_suite.sh            # on a GPU machine; writes runs/device_suite/
#   tools/device_suite.sh --dry-run  # the same steps on the CPU at toy sizes (CI checks it runs)
#
# Data the machine lacks is replaced, and said so: no `bible` program → Python's pydoc text; no
# Fashion-MNIST files → the bundled digits (then step 3 is skipped); no espeak-ng → the audio
# domains are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/device_suite}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

domains=(binary_image text latent_image)
have_espeak=0
command -v espeak-ng >/dev/null && have_espeak=1
[ $have_espeak = 1 ] && domains+=(spectrogram joint)
sets=()
command -v bible >/dev/null || { sets+=(--set data.source=pydoc); echo "no bible-kjv: text uses pydoc"; }
fashion=1
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || fashion=0

if [ $DRY = 1 ]; then
  device=cpu; scale=tiny; block=2; blocks=2; steps=4
  compare_sets=(--set model.channels=8 --set model.channel_mult=[1] --set model.attention=[] --set model.num_blocks=1
                --set train.batch_size=4 --set train.eval_every=2 --set eval.quality_every=2 --set eval.nelbo_examples=8
                --set eval.nelbo_nodes=4 --set eval.quality_samples=16 --set eval.quality_seeds=1 --set sample.n=4
                --set sample.steps=2 --set train.checkpoint_every=2 --set data.size=8 --set data.limit=200 --set train.progress_bar=false)
  [ $fashion = 1 ] || compare_sets+=(--set data.source=digits)
else
  device=cuda; scale=real; block=20; blocks=4; steps=2000
  compare_sets=(--set train.eval_every=500 --set eval.quality_every=1000 --set train.checkpoint_every=1000 --set train.progress_bar=false)
fi
[ $fashion = 1 ] || [ $DRY = 1 ] || echo "no Fashion-MNIST files: step 3 is skipped"

echo "== 1. throughput at ${scale} scale on ${device}: ${domains[*]}"
$PY tools/bench_throughput.py --device "$device" --scale "$scale" --flops --block $block --blocks $blocks \
    --domains "${domains[@]}" "${sets[@]}" --json "$OUT/throughput.json"

echo "== 2. the text transformer compiled"
$PY tools/bench_throughput.py --device "$device" --scale "$scale" --flops --block $block --blocks $blocks \
    --domains text "${sets[@]}" --set train.compile=true --json "$OUT/throughput_compiled.json"

if [ $fashion = 1 ] || [ $DRY = 1 ]; then
  echo "== 3. binarized Fashion-MNIST 28×28: edm vs infonoise, ${steps} steps"
  $PY -m multidiff compare recipes/binary_fashion.yaml --schedules edm,infonoise --max-steps $steps \
      --out "$OUT/fashion" --overwrite "${compare_sets[@]}"
  grep -A 6 "^## Final values" "$OUT/fashion/report.md" || true
fi
echo "device suite: $OUT"
