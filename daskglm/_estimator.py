"""What daskglm's two estimators share beyond nilearn's base classes."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["SharedClientMixin"]


class SharedClientMixin:
    """scikit-learn's ``clone`` for estimators whose ``client`` parameter may be a live ``distributed.Client``.

    ``clone`` deep-copies every parameter; a client is a connection and
    cannot be copied. The clone shares it instead (an address, a scheduler
    file or a local scheduler name are copied as usual).
    """

    client: Any

    def __sklearn_clone__(self) -> Any:
        client = self.client
        if client is None or isinstance(client, (str, os.PathLike)):
            return super().__sklearn_clone__()  # type: ignore[misc]
        self.client = None
        try:
            new = super().__sklearn_clone__()  # type: ignore[misc]
        finally:
            self.client = client
        new.client = client
        return new
