"""Helpers every layer may use: user errors, progress lines, atomic directory writes, dtypes.

The bottom layer: it imports nothing of the project.
"""
