"""Layer 9 — the ``daskglm`` command: ``demo``, ``convert``, ``fit``, ``bids``.

* :mod:`.main` — the parser, ``demo`` and ``convert``; :func:`main`.
* :mod:`.fit`, :mod:`.bids` — the ``fit`` and ``bids`` subcommands.
* :mod:`.common` — argument types, cluster options, one-line errors and warnings.
"""

from .main import main

__all__ = ["main"]
