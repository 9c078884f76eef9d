"""Turn DreamShot input errors into messages that name the node the user sees."""

import contextlib

from ..dreamshot.errors import DreamShotInputError


@contextlib.contextmanager
def reported_as(display_name: str):
    try:
        yield
    except DreamShotInputError as e:
        if e.node:
            raise
        raise e.for_node(display_name) from None
