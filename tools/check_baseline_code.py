"""Checks a built fastlm extension for AVX instructions outside the kernels compiled for
AVX2 and AVX-512.

    python tools/check_baseline_code.py path/to/_core.cpython-*.so

The portable build compiles the kernels once per instruction set (src/cpp/isa.h). Code
that runs before the set is chosen, or whatever the CPU, must use none of AVX: the
bindings, the dispatcher, the baseline kernel copy (fastlm::baseline), and every global
or weak function, which the linker shares between copies (a standard-library template
compiled with AVX flags in one copy and chosen for all would be one). Fails, listing
them, if any such function holds a VEX/EVEX instruction or an AVX-512 mask operation.
Needs binutils (nm, objdump).
"""

from __future__ import annotations

import re
import subprocess
import sys

# VEX/EVEX-encoded instructions all start with "v" (verr/verw are the old exceptions);
# AVX-512 mask instructions start with "k".
AVX_MNEMONIC = re.compile(r"^(v(?!err|erw)[a-z0-9]+|k(mov|and|or|xor|not|shift|test|ortest|unpck|add)[a-z]*)$")
SIMD_COPIES = ("fastlm::avx2::", "fastlm::avx512::", "fastlm_kernels_avx2", "fastlm_kernels_avx512")


def symbols(path):
    """address -> nm type letter of every defined function symbol (uppercase: global or weak)."""
    out = subprocess.run(["nm", "--defined-only", path], check=True, capture_output=True, text=True).stdout
    kinds = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] in "TtWwi":
            kinds.setdefault(int(parts[0], 16), parts[1])
    return kinds


def functions(path):
    """(address, demangled name, mnemonics) of every function in the disassembly."""
    out = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", path], check=True, capture_output=True, text=True
    ).stdout
    header = re.compile(r"^([0-9a-f]+) <(.*)>:$")
    current = None
    for line in out.splitlines():
        m = header.match(line)
        if m:
            if current:
                yield current
            current = (int(m.group(1), 16), m.group(2), [])
        elif current and "\t" in line:
            fields = line.split("\t")
            if len(fields) >= 2 and fields[1].strip():
                current[2].append(fields[1].split()[0])
    if current:
        yield current


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    kinds = symbols(path)
    bad, simd = [], 0
    for address, name, mnemonics in functions(path):
        avx = sorted({m for m in mnemonics if AVX_MNEMONIC.match(m)})
        if not avx:
            continue
        shared = kinds.get(address, "t").isupper()
        in_simd_copy = any(tag in name for tag in SIMD_COPIES)
        baseline_code = name.startswith("fastlm::") and not in_simd_copy
        if shared or baseline_code or "PyInit" in name or "pybind11" in name:
            bad.append(f"  {name} ({'global' if shared else 'local'}): {' '.join(avx[:6])}")
        else:
            simd += 1
    if bad:
        print(f"{path}: AVX instructions where every CPU must run the code:")
        print("\n".join(bad))
        sys.exit(1)
    print(f"{path}: no AVX outside the AVX2/AVX-512 kernel copies ({simd} functions there use it)")


if __name__ == "__main__":
    main()
