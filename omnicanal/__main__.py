"""``omnicanal`` (and ``python -m omnicanal``): the command line, production commands
(``omnicanal/cli.py``) and the tools' (``omnicanal/tools/cli.py``)."""

from __future__ import annotations

import omnicanal.cli_offers
import omnicanal.tools.cli  # noqa: F401  (registers the tools' commands)
from omnicanal.cli import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
