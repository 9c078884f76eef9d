"""Plugins named on the command line as ``package.module:attribute`` (importlib, never eval)."""

from __future__ import annotations

import importlib

from ..errors import DreamShotInputError


def import_object(spec: str, input_name: str):
    """``"package.module:attr"`` (``attr`` may be dotted) -> the object it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DreamShotInputError(input_name, f"{spec!r} is not of the form package.module:attribute.",
                                  "name an importable module and an attribute in it, e.g. mypkg.faces:MyAnalyzer.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise DreamShotInputError(input_name, f"cannot import module {module_name!r} ({e}).",
                                  "install it or put its folder on PYTHONPATH.") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DreamShotInputError(input_name, f"module {module_name!r} has no attribute {attr!r}.",
                                      "check the spelling after the ':'.")
        obj = getattr(obj, part)
    return obj


def build_plugin(spec: str, input_name: str):
    """Import ``spec`` and call it once with no arguments: a class or a factory returning the plugin."""
    factory = import_object(spec, input_name)
    if not callable(factory):
        raise DreamShotInputError(input_name, f"{spec!r} is not callable.",
                                  "name a class or a function that takes no arguments and returns the plugin.")
    return factory()
