"""Errors that reach the user as one line and exit status 2."""


class UserError(ValueError):
    """Bad input: a malformed recipe, unknown name, corrupt file, missing dataset, diverged run, or
    a bad argument to one of the library's public functions (make_schedule, load_schedule, a
    schedule's sample/observe, the parameterizations, the interop helpers): the one error type they
    raise for what a caller passed. It is a ValueError, so ``except ValueError`` catches it too.

    The CLI prints ``multidiff: error: <message>`` on one line and exits with status 2. The message
    must name what is wrong (the file, field, flag or value), never rely on a traceback.
    """


class NonFiniteLossError(UserError):
    """Training produced NaN/inf losses; the run stops and keeps what was already written."""


class Terminated(Exception):
    """The process was asked to stop (SIGTERM, e.g. a cluster's time limit) during training.

    Training stops at once; everything already written stays, and ``--resume`` continues from the
    last checkpoint. The CLI prints one line and exits with status 143 (128 + SIGTERM), so scripts
    and schedulers see a stopped run, not a finished one.
    """
