#!/usr/bin/env bash
# On a lent GPU, after train_zoo.sh: wait for it, store the weights (fp16 safetensors, with the
# round-trip accuracy), export resnet18 and serve it with the CUDA execution provider.
#   bash bench/gpu/finish.sh ZOO_DIR OUT_DIR [WAIT_S]
# What comes back from one call is at most 8 files of 16 MiB: logs and metrics go in one tar,
# resnet18's 22 MB of fp16 weights in two parts.
set -u
zoo=$1 out=$2 wait_s=${3:-400}
for _ in $(seq "$wait_s"); do [ -e "$zoo/DONE" ] && break; sleep 1; done
[ -e "$zoo/DONE" ] || echo "training not finished after $wait_s s; taking what exists"
mkdir -p "$zoo/weights" "$zoo/report"
for ckpt in $(ls "$zoo"/checkpoints/*/*.pt 2>/dev/null); do
  python3 -m models.pretrained publish "$ckpt" --weights-dir "$zoo/weights"
  cp "${ckpt%.pt}.json" "$zoo/report/$(basename "$(dirname "$ckpt")").json"
done 2>&1 | tee "$zoo/report/publish.log"
repo=/tmp/repo && mkdir -p $repo && cp -r model_repository/lenet_bn $repo/
resnet=$(ls "$zoo"/checkpoints/resnet18/*.pt 2>/dev/null | tail -1)
if [ -n "$resnet" ]; then
  python3 -m export.onnx --arch resnet18 --checkpoint "$resnet" --out $repo 2>&1 | tail -2
  python3 bench/gpu/serving.py --repository $repo --json "$zoo/report/serving.json" 2>&1 | tail -60 | tee "$zoo/report/serving.log"
else
  python3 bench/gpu/serving.py --repository $repo --models lenet_bn --json "$zoo/report/serving.json" 2>&1 | tail -60 | tee "$zoo/report/serving.log"
fi
nvidia-smi > "$zoo/report/nvidia-smi.txt" 2>&1
cp "$zoo"/train-*.log "$zoo/report/"
tar cf "$out/report.tar" -C "$zoo" report
for f in nin densenet googlenet; do [ -e "$zoo/weights/$f.safetensors" ] && cp "$zoo/weights/$f.safetensors" "$out/"; done
[ -e "$zoo/weights/resnet18.safetensors" ] && split -b 15M -a 1 "$zoo/weights/resnet18.safetensors" "$out/resnet18.safetensors.part-"
ls -l "$out"
