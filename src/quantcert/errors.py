"""The one exception type for bad user input: the CLI turns it into one line and exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (file, model, domain, delta...). The message is one line."""
