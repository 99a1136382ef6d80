"""Thin model classes of the research systems built on fastlayers ops."""
