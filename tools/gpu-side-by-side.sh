#!/usr/bin/env bash
# One device session: flowify (wgpu over NVIDIA's Vulkan driver) and the authors' PyTorch code on
# the same GPU, one after the other, then a one-epoch MNIST conv2_nsf run on the GPU. Run from the
# repository root on the device machine, with these ignored folders carried beside the tree:
#   .gl/       the Vulkan loader's .deb files (see the device tool's README)
#   .gpu/      flowify.xz: `cargo build --release --features wgpu`, stripped and xz-compressed
#   .authors/  flowification/ (the authors' repository, exported unchanged), wheels/ (nflows 0.14
#              built as a wheel) and bench_authors.py (a copy of tools/bench_authors.py)
# Not yet run: no device was lent to the session that wrote it.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
nvidia-smi -L | tee $OUT/gpu.txt
xz -dc .gpu/flowify.xz > /tmp/flowify; B=/tmp/flowify
chmod +x $B
STEPS=${STEPS:-10}
start=$(date +%s)
# The authors' code first: it needs nothing of ours.
if [ -d .authors ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .authors/wheels/*.whl 2>&1 | tail -2
  PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.authors/flowification timeout 150 \
    python3 .authors/bench_authors.py --device cuda --steps $STEPS --warmup 3 2>$OUT/authors.err | tee $OUT/authors.jsonl
fi
echo "authors done at $(( $(date +%s) - start )) s"
for d in mnist cifar10; do for a in mlp conv1 conv1_nsf conv2 conv2_nsf; do
  timeout 30 $B bench --device wgpu --dataset $d --arch $a --steps $STEPS --warmup 3 --json 2>>$OUT/flowify.err | tee -a $OUT/flowify_gpu.jsonl
  echo "$d $a done at $(( $(date +%s) - start )) s"
done; done
timeout 100 $B train --device wgpu --arch conv2_nsf --epochs 1 --seed 0 --quiet --out /tmp/run 2>&1 | tee $OUT/epoch.txt
cp /tmp/run/summary.json $OUT/ 2>/dev/null; cp /tmp/run/samples/epoch-001.png $OUT/ 2>/dev/null
echo "all done at $(( $(date +%s) - start )) s"
