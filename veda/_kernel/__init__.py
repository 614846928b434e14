"""Kernel definition, analysis, code generation, disk cache and launch path (private)."""
