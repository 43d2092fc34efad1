#!/usr/bin/env bash
# On a lent GPU: train the zoo with the modern recipe, two trainings sharing the GPU at a time
# (each alone leaves most of an H100/H200 idle), then mark the run done.
#   bash bench/gpu/train_zoo.sh OUT_DIR        (detached: see bench/gpu/README.md)
set -u
out=${1:-/tmp/zoo}
mkdir -p "$out"
train() { python3 -m models.train --recipe modern --device cuda --no-progress --out "$out/checkpoints" --arch "$1"; }
train alexnet,nin,googlenet > "$out/train-a.log" 2>&1 &
train vgg11,resnet18,densenet > "$out/train-b.log" 2>&1 &
wait
touch "$out/DONE"
