"""Shared vocabulary and plumbing: results, run configuration, processes, progress.

Imports nothing else from harness; everything else may import it.
"""
