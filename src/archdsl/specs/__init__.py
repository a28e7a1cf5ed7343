"""Bundled specs: one YAML per paper variant, hybrids, and search spaces (package data)."""
