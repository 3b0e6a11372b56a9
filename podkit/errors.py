"""The errors a user can act on, shared by every layer (and cheap to import: the command line
catches them without loading torch)."""


class BackendUnavailable(RuntimeError):
    """A backend's package, device or plugin is missing; the message says what to install."""


class ParityError(RuntimeError):
    """An exported artefact computes something else than the PyTorch model."""
