"""The `aelab` command line: verb subcommands built from plain functions (jsonargparse)."""
