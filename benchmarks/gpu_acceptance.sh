#!/usr/bin/env bash
# GPU acceptance: everything aotrain claims about GPUs, on one CUDA GPU, in one command (about 8 minutes on
# an H200 with 16 cores).
#   1. `pytest -m gpu`: each GPU strategy (ddp, DeepSpeed ZeRO-2 and ZeRO-3, FSDP1, FSDP2, FSDP2 with
#      CPU offload) fits the smoke run, exports its checkpoint to one file and evaluates that file,
#      and the exported ZeRO-3 and FSDP1 weights give the trained network's features;
#   2. ViT-B/32 CLIP training throughput, bf16, batch 256 (benchmarks/train_throughput.py --gpu):
#      open_clip_train on synthetic data and on the toy world's shards, and aotrain fit on the same
#      shards, side by side: samples/s, the ratios and model FLOPs utilisation.
# Figures and outcomes go to OUT/gpu_acceptance.json, logs beside it.
#
#   bash benchmarks/gpu_acceptance.sh [OUT]          # OUT: default ./gpu_acceptance
#
# On a machine without a package index, put the wheels of the project's dependencies that its Python
# lacks in .whl/ (benchmarks/offline_wheels.sh makes them); they are installed into a temporary folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu_acceptance}" && cd "${1:-gpu_acceptance}" && pwd)
python=${PYTHON:-python3}
began=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - began )) s] $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  elapsed "installing $(ls .whl/*.whl | wc -l) carried wheels"
  # --prefix, not --target: --target replaces a top-level folder per wheel, which breaks packages that
  # share one (opentelemetry's namespace, mlflow's three wheels).
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-installed \
    --prefix /tmp/aotrain-prefix .whl/*.whl || exit 1
  site=$(find /tmp/aotrain-prefix -type d \( -name site-packages -o -name dist-packages \) | head -1)
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

elapsed "environment"
"$python" - <<'EOF' 2>&1 | tee "$out/environment.txt" || exit 1
import os, torch, lightning, open_clip, mlflow, hydra, webdataset, deepspeed
assert torch.cuda.is_available(), "no CUDA GPU visible"
print(f"gpu {torch.cuda.get_device_name()} x{torch.cuda.device_count()}, cpus {os.cpu_count()}")
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), lightning {lightning.__version__}, "
      f"open_clip {open_clip.__version__}, deepspeed {deepspeed.__version__}, mlflow {mlflow.__version__}")
EOF

elapsed "pytest -m gpu"
# One xdist worker per test: each is a few CLI subprocesses or a short fit, mostly start-up, on a tiny model.
# pytest-timeout, where installed, fails a hung test alone, so the others' outcomes are still written.
per_test=$("$python" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$(( ${PYTEST_TIMEOUT:-300} - 30 ))")
timeout "${PYTEST_TIMEOUT:-300}" "$python" -m pytest -m gpu -n 8 -p no:cacheprovider -v $per_test \
  tests --junitxml="$out/pytest_gpu.xml" 2>&1 | tee "$out/pytest_gpu.log"

elapsed "training throughput"
timeout "${THROUGHPUT_TIMEOUT:-360}" "$python" benchmarks/train_throughput.py --gpu --model ViT-B-32 \
  --batch-size 256 --workers "${WORKERS:-8}" --steps 10 110 --json "$out/throughput.json" \
  --logs "$out/throughput_logs" 2>&1 | tee "$out/throughput.log"

elapsed "writing $out/gpu_acceptance.json"
"$python" - "$out" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
result = {"environment": (out / "environment.txt").read_text().strip().splitlines()}
tests = {}
if (out / "pytest_gpu.xml").exists():
    for case in ET.parse(out / "pytest_gpu.xml").iter("testcase"):
        bad = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        tests[case.get("name")] = {"outcome": bad[0] if bad else "passed", "seconds": float(case.get("time", 0))}
result["pytest_gpu"] = tests or "did not finish"
throughput = out / "throughput.json"
result["throughput"] = json.loads(throughput.read_text()) if throughput.exists() else "did not finish"
(out / "gpu_acceptance.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"strategies: " + ", ".join(f"{name}: {t['outcome']}" for name, t in tests.items()))
ok = tests and all(t["outcome"] == "passed" for t in tests.values()) and throughput.exists()
sys.exit(0 if ok else 1)
EOF
