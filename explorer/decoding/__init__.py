"""The decoding engine: strategies, schedules, sampling, energies, violations, the step loop.

Pure of UI and storage: it imports only its own modules and the interfaces in `protocols`.
"""
