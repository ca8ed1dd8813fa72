"""The exit statuses of every `aup-milter` command, in one table.

The names and numbers are those of sysexits.h because two readers act on
them: Postfix's pipe transport (`aup-milter intake`) defers the message on
EX_TEMPFAIL and bounces it on the other codes from 64 up (EX_CONFIG with
5.3.5), and the systemd units do not restart a daemon that exits EX_CONFIG,
since a restart cannot fix the file. Usage errors exit EX_USAGE, including
those argparse finds (`cli.main.ArgumentParser`). Only the codes a command
returns are listed. `status` follows the Nagios plugin convention instead
(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), since monitoring systems read it;
its usage errors still exit EX_USAGE. doc/aup-milter.8 (EXIT STATUS) says
which command returns which.
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
"""Not a sysexits code (C's EXIT_FAILURE): a request refused, the message says why."""
EX_WARNING = 1
"""`status`: a check warns (Nagios WARNING; the same number as EX_FAILURE)."""
EX_CRITICAL = 2
"""`status`: a check failed (Nagios CRITICAL)."""
EX_UNKNOWN = 3
"""`status`: a check could not be made (Nagios UNKNOWN)."""
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78
