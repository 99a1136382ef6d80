"""Thin model classes of the research systems that use fastlayers kernels."""
