"""Pure decision functions: no I/O, no clock (time is passed in)."""
