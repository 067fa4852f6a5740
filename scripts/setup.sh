#!/usr/bin/env bash
# Creates or refreshes medlabel's Python tooling: the venv at $MEDLABEL_CACHE/py
# (default ~/.cache/medlabel/py) with the AWS emulator (moto), the libtorch that the
# GPU runner links against (torch's wheel, CPU libraries only), and the real MONAI Label
# client and imaging libraries the compatibility tests and peer benchmarks use, and
# (with Node.js and npm) the OIDC issuer the auth tests start on loopback
# (oauth2-mock-server, pinned by functions/tests/oidc/package-lock.json, in
# $MEDLABEL_CACHE/oidc). Python and Node.js are test tooling only; nothing in the
# product runs them.
#
# Also installs, from Debian's packages and only when missing, what the DICOMweb tests
# run against: Orthanc with its DICOMweb plugin, and Chromium for the OHIF test.
#
# Idempotent and fast when nothing changed: every pin is checked against the installed
# metadata first and pip runs only for what is missing or different. .ci/run calls
# this, and so should developers, so both get the same versions.
#
# Also links <repo>/.libtorch to the wheel's torch folder, which .cargo/config.toml
# names as LIBTORCH for builds that do not export it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MEDLABEL_CACHE:-$HOME/.cache/medlabel}
venv=$cache/py
python=${PYTHON:-python3}

# Installed with their dependencies.
with_deps=(
    "moto[server]==5.2.5"
    "requests==2.34.2"
    "numpy==2.4.6"
    "nibabel==5.4.2"
    # MONAI Label's LocalDatastore (the studies-folder test reads the folder with it).
    "filelock==3.20.3"
    "watchdog==6.0.0"
    # The OHIF panel check (functions/tests/python/ohif_panel.py) talks CDP to Chromium.
    "websocket-client==1.9.2"
    # Slicer's `.nrrd` results in the SmartEdit client test (client_smartedit.py).
    "pynrrd==1.1.3"
)
# Installed alone: torch's CUDA dependencies are gigabytes the CPU build never loads
# (only libcudart and libcupti are needed to load libtorch_cpu.so), monailabel's
# client needs nothing beyond requests, and MONAI (bundle parity tests, peer
# benchmarks) needs only numpy, torch and, to run a bundle's evaluator, ignite.
no_deps=(
    "torch==2.11.0"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-cupti==13.0.85"
    "monailabel==0.8.5"
    "monai==1.6.1"
    "pytorch-ignite==0.5.5"
)

debs=()
[[ -x /usr/sbin/Orthanc ]] || debs+=(orthanc)
[[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] || debs+=(orthanc-dicomweb)
command -v chromium >/dev/null || debs+=(chromium)
if ((${#debs[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing ${debs[*]} (Debian packages)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${debs[@]}" >/dev/null
    else
        echo "setup: ${debs[*]} missing; the DICOMweb and OHIF tests need them" \
            "(apt-get install ${debs[*]})" >&2
    fi
fi

if [[ ! -x $venv/bin/python ]]; then
    echo "setup: creating $venv" >&2
    mkdir -p "$cache"
    "$python" -m venv "$venv"
fi

# Prints the requirements whose installed version differs or is absent (extras are
# checked by their base package; moto's server extra brings flask, checked too).
missing() {
    "$venv/bin/python" - "$@" <<'PY'
import re
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, want = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(.+)", spec).groups()
    names = [name] + (["flask", "flask-cors"] if spec.startswith("moto[server]") else [])
    try:
        ok = version(name) == want and all(version(n) for n in names[1:])
    except PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
PY
}

mapfile -t todo < <(missing "${with_deps[@]}")
if ((${#todo[@]})); then
    echo "setup: installing ${todo[*]}" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${todo[@]}"
fi
mapfile -t todo < <(missing "${no_deps[@]}")
if ((${#todo[@]})); then
    echo "setup: installing (no deps) ${todo[*]}" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${todo[@]}"
fi

site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# LIBTORCH skips tch's own version check: make sure the wheel is the one tch pins.
torch_version=$(sed -n "s/^__version__ = '\([^']*\)'.*/\1/p" "$site/torch/version.py")
if [[ $torch_version != 2.11.0* ]]; then
    echo "setup: $site/torch is PyTorch '$torch_version'; tch 0.24 needs 2.11.0" >&2
    exit 1
fi
ln -sfn "$site/torch" "$repo/.libtorch"

# The auth tests' OIDC issuer: reinstalled only when the pinned lock file changed.
oidc_src=$repo/functions/tests/oidc
oidc=$cache/oidc
if ! cmp -s "$oidc_src/package-lock.json" "$oidc/package-lock.json" ||
    [[ ! -f $oidc/node_modules/oauth2-mock-server/package.json ]]; then
    if ! command -v npm >/dev/null; then
        echo "setup: npm is missing; the auth tests need Node.js >= 20.19 and npm" >&2
        exit 1
    fi
    echo "setup: installing the test OIDC issuer into $oidc" >&2
    mkdir -p "$oidc"
    cp "$oidc_src/package.json" "$oidc_src/package-lock.json" "$oidc/"
    (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error)
fi

# `import torch` (MONAI parity tests, peer benchmarks) loads the CUDA wheel's Python
# extension, which links cuDNN, cuBLAS, NCCL, ... that this CPU install leaves out.
# Tiny stand-ins (scripts/cuda_stubs.py) satisfy the loader; tests put them last on
# LD_LIBRARY_PATH, after the real libraries where a machine has them.
stubs=$venv/cuda-stubs
cuda_path="$site/nvidia/cu13/lib"
if ! LD_LIBRARY_PATH="$cuda_path:$stubs" "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: building CUDA library stand-ins in $stubs" >&2
    rm -rf "$stubs"
    "$venv/bin/python" "$repo/scripts/cuda_stubs.py" "$site" "$stubs"
    LD_LIBRARY_PATH="$cuda_path:$stubs" "$venv/bin/python" -c "import torch, monai"
fi
