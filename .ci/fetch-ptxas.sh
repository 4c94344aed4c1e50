#!/usr/bin/env bash
# Downloads NVIDIA's ptxas (CUDA 12.9, accepts PTX up to .version 8.8) from the PyPI wheel
# nvidia-cuda-nvcc-cu12==12.9.86 and prints its path. Idempotent: a cached copy is reused.
# The PTX tests find it through OPTC_PTXAS:  export OPTC_PTXAS="$(.ci/fetch-ptxas.sh)"
#
# Env: OPTC_PTXAS_CACHE  cache directory (default: $HOME/.cache/optc/ptxas)
#      PYTHON            python with pip (default: python3)
set -euo pipefail

version=12.9.86
cache="${OPTC_PTXAS_CACHE:-${HOME}/.cache/optc/ptxas}/${version}"
ptxas="${cache}/ptxas"

if [[ -x "${ptxas}" ]] && "${ptxas}" --version >/dev/null 2>&1; then
    echo "${ptxas}"
    exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

echo "fetch-ptxas: downloading nvidia-cuda-nvcc-cu12==${version}" >&2
"${python}" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --dest "${work}" "nvidia-cuda-nvcc-cu12==${version}" >&2
wheel="$(ls "${work}"/nvidia_cuda_nvcc_cu12-"${version}"-*.whl | head -n 1)"

# Extract only the ptxas binary (a wheel is a zip; python's zipfile needs no unzip tool).
"${python}" - "${wheel}" "${work}/ptxas" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("nvidia/cuda_nvcc/bin/ptxas") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod +x "${work}/ptxas"
"${work}/ptxas" --version >/dev/null

mkdir -p "${cache}"
mv -f "${work}/ptxas" "${ptxas}.tmp.$$"
mv -f "${ptxas}.tmp.$$" "${ptxas}"
echo "${ptxas}"
