"""Figures, the token view and run metrics: pure functions of a stored run (RunArrays)."""
