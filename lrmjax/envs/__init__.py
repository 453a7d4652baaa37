"""Environments and tools for multi-turn episodes."""
