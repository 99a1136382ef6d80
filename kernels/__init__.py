"""Triton kernels of fastlayers, one module per family. Installed as ``fastlayers.kernels``.

The launchers take tensors on any device Triton can address: CUDA tensors normally, CPU tensors under
``TRITON_INTERPRET=1`` (how CI tests them on machines without a GPU).
"""
