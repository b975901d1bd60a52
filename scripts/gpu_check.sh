#!/usr/bin/env bash
# The prepared GPU check: on a machine with one NVIDIA GPU and no internet, in about 8 minutes, from the repository
# root (torch, torchvision, tqdm, numpy, matplotlib, pytest and hypothesis installed):
#   1. the CUDA tests (tests/test_gpu.py), then the rest of the test suite (failures named);
#   2. bench.py --synthetic for versions 1, 9, 13, 14 and 15 (with the compiled column and its compile time);
#   3. versions 9 (25 epochs), 13, 14 and 15 in their default numerics (bfloat16 for 13-15 on a GPU that has it),
#      and 13 compiled, on a synthetic image folder of CIFAR-10's shape written here: the time from the first step
#      to the final test (the epochs' train + test seconds and the final test, from the checkpoint), with the whole
#      process's time beside it (compilation included);
#   4. version 13 through torchrun with one process, and a two-version table under torchrun.
# Targets: version 9 under 10 s and version 13 under 5 s, first step to final test.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-/tmp/gpu-check}
WORK=$(mktemp -d)
mkdir -p "$OUT_DIR"
export XDG_CACHE_HOME="$WORK/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== 1. the CUDA tests first (so a failure elsewhere cannot hide them), then the rest of the suite"
timeout 240 python3 -m pytest -q -rf tests/test_gpu.py 2>&1 | tail -15
timeout 300 python3 -m pytest -q -rf -n 8 tests --ignore=tests/test_gpu.py 2>&1 | tail -15

echo "== 2. bench.py --synthetic"
timeout 150 python3 bench.py --synthetic --versions 1,9 --steps 100 --repeats 3
timeout 240 python3 bench.py --synthetic --versions 13,14,15 --steps 20 --repeats 3

echo "== 3. first step to final test on a synthetic CIFAR-10-shaped image folder"
python3 - "$WORK/images" <<'PY'
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
rng = np.random.default_rng(0)


def write(job):
    split, index = job
    label = index % 10
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) // 2
    image[4 + (label // 5) * 12:12 + (label // 5) * 12, 2 + (label % 5) * 6:8 + (label % 5) * 6] = 250
    folder = root / split / f"class{label}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{index:05d}.png")


jobs = [("train", i) for i in range(50_000)] + [("test", i) for i in range(10_000)]
with ThreadPoolExecutor(16) as pool:
    list(pool.map(write, jobs))
print("wrote", len(jobs), "images to", root)
PY
report() {
  python3 - "$1" <<'PY'
import sys
import torch
state = torch.load(sys.argv[1] + "/checkpoint.pt", map_location="cpu", weights_only=True)
rows = state["metrics"]
seconds = sum(row["seconds"] for row in rows) + rows[-1].get("final_test_seconds", 0)
accuracy = rows[-1].get("final_test_acc", rows[-1]["test_acc"])
print(f"first step to final test: {seconds:.2f} s over {len(rows)} epochs, test accuracy {accuracy:.4f}")
PY
}
for run in 9 13 14 15 "13 --compile"; do
  name=v${run// /}
  started=$(date +%s.%N)
  timeout 300 python3 main.py $run --image-folder "$WORK/images" --out "$WORK/$name" --quiet --eval-every 100 | tail -2
  echo "$name whole process: $(echo "$(date +%s.%N) - $started" | bc) s (the folder decoded once, then cached)"
  report "$WORK/$name"
done

echo "== 4. torchrun, one process; a table of two versions under torchrun"
timeout 120 torchrun --standalone --nproc_per_node 1 main.py 13 --image-folder "$WORK/images" \
  --out "$WORK/v13-torchrun" --quiet | tail -2
report "$WORK/v13-torchrun"
timeout 200 torchrun --standalone --nproc_per_node 1 main.py 9,13 --epochs 2 --image-folder "$WORK/images" \
  --out "$WORK/table" --quiet | tail -6
