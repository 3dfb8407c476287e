"""Offline work: losses over files and datasets larger than memory, computed here by the engine.

Imports the engine and nothing of the server: no HTTP, no store, no metrics.
"""
