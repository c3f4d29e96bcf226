#!/usr/bin/env bash
# Install everything `make demo` / `make test` need on a fresh Debian machine:
# ffmpeg and Chromium (Debian packages, when missing) and a virtual environment with the
# project, its dev, train, filters and decord extras, pinned by constraints.txt.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"

# Debian packages a fresh machine lacks: ffmpeg (decoding, probing); Chromium with its driver (the viewer's
# browser test drives headless Chromium through selenium); iproute2 and util-linux (ip, unshare, nsenter) for
# the tests that run a Ray cluster in its own network namespace (the chaos suite, the README's cluster commands).
missing=()
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then missing+=(ffmpeg); fi
if ! command -v chromium >/dev/null; then missing+=(chromium); fi
if ! command -v chromedriver >/dev/null; then missing+=(chromium-driver); fi
if ! command -v ip >/dev/null; then missing+=(iproute2); fi
if ! command -v unshare >/dev/null || ! command -v nsenter >/dev/null; then missing+=(util-linux); fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "not found: ${missing[*]}: installing the Debian packages"
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "error: ${missing[*]} missing and this user cannot install packages; install them and rerun" >&2; exit 1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# decord2 and decord both install the module `decord`; only decord 0.6.0 is trusted (pipeline/video/decode_decord.py).
if "$venv/bin/python" -m pip show -q decord2 >/dev/null 2>&1; then "$venv/bin/python" -m pip uninstall -q -y decord2; fi
"$venv/bin/python" -m pip install -q -c constraints.txt -e ".[dev,train,filters,decord]"
# fixtures/ (the demo's example videos and tiny models, the tests' inputs) is not in the wheel: a checkout's venv
# puts the checkout itself on its path, so the demo, the tests and the benches import it.
"$venv/bin/python" -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "prolongvid-checkout.pth").write_text(sys.argv[1] + "\n")' "$PWD"
# The project's own bytecode, once: every Ray worker and decode child imports it, and with
# PYTHONDONTWRITEBYTECODE set (or a read-only checkout) each would compile it again.
"$venv/bin/python" -m compileall -q -j 0 pipeline shards filters dense_caption train evaluation >/dev/null
echo "installed into $venv: $("$venv/bin/python" -c 'import pipeline, torch, av, decord; print("prolongvid", pipeline.__version__, "torch", torch.__version__, "av", av.__version__, "decord", decord.__version__)')"
