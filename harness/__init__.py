"""hmmlab: a QEMU device emulation harness for Linux HMM."""

__version__ = "0.1.0"
