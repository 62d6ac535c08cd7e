"""The `secateurs` command: `prune` and `inspect` (local, engine only), `serve`, `api`,
`worker`, `keys`, `db`."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _register() -> None:
    # Each command module adds its commands to `app`; imports are light (no torch at import).
    from cli import db, inspect_model, prune, service  # noqa: F401


def main() -> None:
    _register()
    app()
