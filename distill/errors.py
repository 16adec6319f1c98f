"""Errors a job can end with that are not bad input: the CLI prints them as one line and exits 1.

Kept apart from the modules that raise them so the CLI can catch them without
importing Lightning or Ray.
"""


class RunFailed(RuntimeError):
    """The job started but could not finish as asked (e.g. training diverged); the message is one line."""
