"""`python -m scaling ...` is the `scaling` command."""

from scaling.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="scaling")
