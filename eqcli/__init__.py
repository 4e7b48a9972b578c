"""eqimg command line (Typer + rich). The library lives in eqcli_core."""
