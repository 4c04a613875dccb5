"""Errors that reach a person: one line naming the file and the problem."""


class InputError(Exception):
    """Bad input. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")


class OutputError(InputError):
    """An output that cannot be written (read-only folder, disk full): one line, as InputError."""
