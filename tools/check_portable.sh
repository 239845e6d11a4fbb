#!/usr/bin/env bash
# Proof that the portable build runs on an x86-64 CPU without AVX: builds a wheel
# (pip wheel .), unpacks it into a scratch directory and runs the op tests from there
# under qemu-x86_64 -cpu Nehalem (SSE4.2, no AVX), where the first AVX instruction on the
# path would stop the process. The dispatcher must choose the baseline kernels there.
#
#   tools/check_portable.sh [pytest arguments]
#
# By default every op case of tests/test_ops.py against the NumPy reference, once (not the
# determinism repeats): about 5 minutes on a busy 2-core machine, emulation being slow.
#
# Needs qemu-user (Debian: apt-get install qemu-user-static) and a Python with numpy and
# pytest (PYTHON, default python3; a venv works: its packages are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."

QEMU=$(command -v qemu-x86_64-static || command -v qemu-x86_64 || true)
if [ -z "$QEMU" ]; then
    echo "check_portable.sh: needs qemu-x86_64 (Debian: apt-get install qemu-user-static)" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
# qemu runs an ELF binary, not a pyenv shim or a venv's symlink resolved by the shell; the
# interpreter's own packages (a venv's numpy and pytest) are passed on by PYTHONPATH.
REAL_PYTHON=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
PACKAGES=$("$PYTHON" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"] + ":" + p["platlib"])')

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "== building the wheel"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/wheel" .
"$PYTHON" -m zipfile -e "$WORK"/wheel/fastlm-*.whl "$WORK/site"

run() {
    env -u FASTLM_ISA PYTHONPATH="$WORK/site:$PACKAGES" OMP_NUM_THREADS=2 \
        "$QEMU" -cpu Nehalem "$REAL_PYTHON" "$@"
}
echo "== under $QEMU -cpu Nehalem"
run -c 'import fastlm; info = fastlm.build_info(); print(fastlm.__file__, info)
assert info["isa"] == "baseline" and info["isa_available"] == ["baseline"], info'
if [ $# -eq 0 ]; then
    set -- tests/test_ops.py -k "test_op and not deterministic"
fi
start=$(date +%s)
run -m pytest -q -p no:cacheprovider "$@"
echo "== op tests under qemu Nehalem passed in $(( $(date +%s) - start )) s"
