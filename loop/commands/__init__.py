"""One module per command of `autoresearch` (start and resume, stop, status, run, runs, show):
each takes the repository and its arguments, prints, and returns an exit code or raises one of
the typed errors of loop/errors.py, which cli.main turns into one line and an exit code."""
