"""The `interceptor` command line."""

import click

from interceptor import __version__


@click.group()
@click.version_option(__version__, prog_name="interceptor")
def main() -> None:
    """Least-privilege access for AI agents, enforced on this host."""
