"""``python -m scoreda.kernels``: build every kernel for this machine (``make install`` runs it)."""

from scoreda.kernels import KERNELS, library

for kernel in KERNELS:
    print(f"{kernel}: {library(kernel)._name}")
