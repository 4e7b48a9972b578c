"""CLI commands: analyze (placeholder until implemented)."""
import typer


def register(app: typer.Typer) -> None:
    pass
