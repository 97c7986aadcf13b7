"""One module per CLI subcommand (see zsad.cli)."""
