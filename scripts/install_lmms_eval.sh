#!/usr/bin/env bash
# Install lmms-eval with this project (the `lmms` extra) into its own virtual environment, for the test that
# runs `lmms-eval --model prolongvid` offline. lmms-eval pins av below 16; the project's own venv keeps the av
# its decoders are tested with, so lmms-eval lives here (users who want it beside the project install
# `pip install -e ".[lmms]"`, which moves av below 16).
#
# Usage: scripts/install_lmms_eval.sh [VENV]   (default .venv-lmms)
# Idempotent: a stamp in VENV records what was installed; a rerun with the same script returns at once.
set -euo pipefail
start=$SECONDS
venv="${1:-.venv-lmms}"
python="${PYTHON:-python3}"
UV_VERSION=0.13.9

stamp="$venv/.lmms.stamp"
fingerprint="lmms=$(grep -o '"lmms-eval==[^"]*"' pyproject.toml) script=$(sha256sum "$0" | cut -c1-16) constraints=$(sha256sum constraints.txt | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then
  echo "lmms-eval already installed in $venv ($fingerprint)"
  exit 0
fi
rm -f "$stamp"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
if [ "$("$vpy" -m uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  "$vpy" -m pip install -q "uv==$UV_VERSION"
fi
# uv does not read pip's configuration: pass its find-links folders on (where the pinned torch may lie).
find_links="${PIP_FIND_LINKS:-$("$vpy" -m pip config get global.find-links 2>/dev/null || true)}"
uv_args=()
for link in $find_links; do uv_args+=(--find-links "$link"); done
UV_LINK_MODE=copy "$vpy" -m uv pip install --quiet --python "$vpy" "${uv_args[@]}" \
  -c constraints.txt -e ".[lmms]"
# fixtures/ (the demo's example videos and tiny models, the tests' inputs) is not in the wheel: a checkout's venv
# puts the checkout itself on its path, so the demo, the tests and the benches import it.
"$vpy" -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "prolongvid-checkout.pth").write_text(sys.argv[1] + "\n")' "$PWD"
"$vpy" -c 'import lmms_eval, evaluation.lmms, av, torch; print("lmms-eval ready: av", av.__version__, "torch", torch.__version__)'
echo "$fingerprint" > "$stamp"
echo "installed lmms-eval into $venv in $((SECONDS - start)) s"
