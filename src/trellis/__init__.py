"""Trellis."""
