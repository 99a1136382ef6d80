"""Fuzzing of the fastlayers ops (python -m fuzz.run); see fuzz/run.py."""
