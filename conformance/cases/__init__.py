"""One module per part of the spec; importing this package registers every case."""

from . import (  # noqa: F401
    upload,
)
