"""One module per command that reads a repository's runs: `runs` lists them, `show` opens one experiment.

Each exposes a `*_command` function that prints, returns an exit code, and raises a typed error
from loop.errors for a refusal; the CLI maps those to one line and an exit code.
"""
