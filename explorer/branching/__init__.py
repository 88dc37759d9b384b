"""Branching: new runs that start from the state after step k of a stored run, with edits."""
