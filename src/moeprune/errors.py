"""User-facing errors: each carries one clear line and the process exit code the CLI uses."""

from __future__ import annotations


class MoePruneError(Exception):
    """Base class. The CLI prints ``error: <message>`` and exits with ``exit_code``."""

    exit_code = 2


class InputError(MoePruneError):
    """The model, checkpoint or statistics given cannot be used as they are."""


class UnsupportedFamilyError(InputError):
    """config.json names a model_type that has no entry in the registry."""


class PlanError(MoePruneError):
    """The requested pruning cannot be done (ratio, top-k, groups)."""


class OutputError(MoePruneError):
    """The output location cannot be written as asked."""


class VerificationError(MoePruneError):
    """A pruned checkpoint does not match the masked original."""

    exit_code = 1


class Interrupted(MoePruneError):
    """The run was stopped by a signal; the message says what was kept."""

    exit_code = 130
