"""CLI subcommands, one module per area, registered with :func:`fruitpipe.cli.command`."""
