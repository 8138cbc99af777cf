"""Parsers and checks of what a guest and QEMU produced: kernel splats, KTAP,
the DMA trace, IOMMU decisions, unittest output.
"""
