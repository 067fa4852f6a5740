#!/usr/bin/env python3
"""Builds empty stand-ins for the CUDA libraries that PyTorch's CUDA wheel links against
but a CPU-only test machine does not have (cuDNN, cuBLAS, cuFFT, cuSPARSE, NCCL, ...),
so that `import torch` works for the Python test tooling (MONAI parity tests, peer
benchmarks) without downloading ~3 GB of CUDA libraries that CPU code never calls.

Each stub has the real library's soname, its symbol-version node and a no-op definition
of every symbol torch's libraries import from it, so the dynamic loader resolves them;
none is ever called on the CPU. On a machine with the real libraries torch loads those
first (its own rpath), and the stubs, placed after them on LD_LIBRARY_PATH, are unused.

Usage: cuda_stubs.py <site-packages> <out-dir>    (needs `cc` and `nm`)
"""
import collections
import glob
import os
import subprocess
import sys

# soname -> (symbol version node or None, prefix of unversioned symbols)
LIBS = {
    "libcudnn.so.9": ("libcudnn.so.9", None),
    "libcublas.so.13": ("libcublas.so.13", None),
    "libcublasLt.so.13": ("libcublasLt.so.13", None),
    "libcufft.so.12": ("libcufft.so.12", None),
    "libcusparse.so.12": ("libcusparse.so.12", None),
    "libnvshmem_host.so.3": ("NVSHMEM", None),
    "libcufile.so.0": (None, "cuFile"),
    "libcusparseLt.so.0": (None, "cusparseLt"),
    "libnccl.so.2": (None, "nccl"),
    "libcurand.so.10": (None, "curand"),
}


def undefined_symbols(site):
    """Symbols torch's libraries import: {version node or "": {names}}."""
    found = collections.defaultdict(set)
    libs = glob.glob(f"{site}/torch/lib/*.so*") + glob.glob(f"{site}/torch/_C*.so")
    for lib in libs:
        out = subprocess.run(["nm", "-D", "--undefined-only", "--with-symbol-versions", lib],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            name = line.split()[-1]
            if "@" in name:
                sym, version = name.split("@", 1)
                found[version.lstrip("@")].add(sym)
            else:
                found[""].add(name)
    return found


def main():
    site, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    syms = undefined_symbols(site)
    for lib, (version, prefix) in LIBS.items():
        names = sorted(syms.get(version, ())) if version else sorted(
            n for n in syms[""] if n.startswith(prefix))
        src = os.path.join(out, lib + ".c")
        with open(src, "w") as f:
            f.write("".join(f"void {n}(void) {{}}\n" for n in names) or "typedef int empty;\n")
        args = ["cc", "-shared", "-o", os.path.join(out, lib), f"-Wl,-soname,{lib}", src]
        if names or version:
            script = os.path.join(out, lib + ".map")
            with open(script, "w") as f:
                exported = " ".join(n + ";" for n in names)
                f.write(f"{version or ''} {{ global: {exported} local: *; }};\n" if names
                        else f"{version} {{ }};\n")
            args.insert(-1, f"-Wl,--version-script={script}")
        subprocess.run(args, check=True)
        os.remove(src)


if __name__ == "__main__":
    main()
