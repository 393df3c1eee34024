"""The error tree. Every error the system raises on purpose is a PSError.

They are plain exceptions with a single message argument, so they survive
pickling between Ray actors and the driver unchanged.
"""


class PSError(Exception):
    """Base of every error raised on purpose by this project."""


class ConfigError(PSError, ValueError):
    """A job or cluster configuration names an unknown key or a bad value."""


class ShapeError(PSError, ValueError):
    """A tensor's size, dtype or shape does not match what the receiver holds."""


class JobError(PSError, RuntimeError):
    """A job could not finish: a worker failed or the job was stopped."""


class LeftJobError(PSError):
    """A worker that has left a shard's clock table tried to push again."""


class OutOfOrderError(PSError):
    """A request came out of protocol order (a bsp push for a clock not yet gathered)."""


class RolledBackError(PSError):
    """A shard was restored from a checkpoint under a worker: it must register again (retryable)."""


class StallError(JobError):
    """No clock advanced for the stall timeout, and the stall policy gave up."""


class ClusterError(PSError, RuntimeError):
    """Provisioning a Ray cluster, or talking to one, failed."""


class TransportError(PSError, ConnectionError):
    """A shard could not be reached, bound or answered with an error status."""


class UnknownTensorError(PSError, KeyError):
    """A name that no tensor in a layout has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownWorkerError(PSError, KeyError):
    """A call named a worker id the shard was not told about."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownTableError(ShapeError, KeyError):
    """A sparse call named a table the shard does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputError(ShapeError):
    """Input a shard refuses before it touches any state; ``reason`` names the check for its counters."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # two arguments, so it crosses between actors intact
        return type(self), (str(self), self.reason)


class UntrustedCodeError(ConfigError):
    """A run or model directory names code that is neither rayps's bundled models nor the user's own:
    it runs only when the user trusts the directory on purpose (``--trust``, ``trust=True``)."""
