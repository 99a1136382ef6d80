"""Runnable examples: python -m fastlayers.examples.<name>."""
