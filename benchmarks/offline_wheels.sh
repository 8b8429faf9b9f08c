#!/usr/bin/env bash
# Wheels for a GPU machine without a package index (its Python already has torch, Lightning and the
# rest of a CUDA image): every package of this project's venv that the target's list lacks, for
# CPython 3.12 on x86-64 Linux, into DEST; packages PyPI serves only as sources (antlr4, deepspeed)
# are built into wheels here. benchmarks/gpu_acceptance.sh installs DEST=.whl/ before it runs.
#
#   bash benchmarks/offline_wheels.sh TARGET_PACKAGES [DEST]    # DEST: default .whl
#
# TARGET_PACKAGES: the target's package names, comma- or newline-separated (`pip list` there, or the
# machine's documentation). Run from the project's venv (`.venv/bin/pip freeze` is the source).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: bash benchmarks/offline_wheels.sh TARGET_PACKAGES [DEST]}
dest=${2:-.whl}
mkdir -p "$dest"
python=${PYTHON:-.venv/bin/python}

missing=$("$python" - "$target" <<'EOF'
import re, subprocess, sys

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = {norm(n) for n in re.split(r"[,\s]+", open(sys.argv[1]).read()) if n}
# The project itself travels as source; mlflow's wheel holds every file of mlflow-skinny and
# mlflow-tracing, and installing all three would let the smaller ones overwrite it.
skip = {"aotrain", "mlflow-skinny", "mlflow-tracing", "pyflakes"}
for line in subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.splitlines():
    if "==" in line and not line.startswith(("#", "-e")):  # an editable install is a comment + a path
        name = line.split("==")[0]
        if norm(name) not in have | skip and not norm(name).startswith("nvidia-"):
            print(line)
EOF
)
platforms=""
for n in 17 24 27 28 31 34; do platforms+=" --platform manylinux_2_${n}_x86_64"; done
for req in $missing; do
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms --platform manylinux2014_x86_64 -d "$dest" "$req" 2>/dev/null \
  || DS_BUILD_OPS=0 "$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "$req"
done
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1), in $dest"
