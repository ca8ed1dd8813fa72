"""Complaint (ARF) and bounce (DSN, plain-text) classification: the intake and `report classify`."""
