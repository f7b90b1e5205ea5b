"""Synthetic card traffic with injected fraud, market ticks, and replay of external files."""
