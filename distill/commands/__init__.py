"""One module per `distill` subcommand; each composes the driver stages (cli.py dispatches here)."""
