"""The `scaling` command line: one Click group, one module per subcommand, loaded only when invoked."""
