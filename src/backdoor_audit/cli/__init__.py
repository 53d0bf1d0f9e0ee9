"""`audit`: the command line. ``main`` is the click group; each command parses, calls one library
function and prints what it returns (see main.py). ``audit zoo`` is its own module (zoo.py),
shared helpers are in common.py; zoo.py and main.py do not import each other's commands."""

from .main import main

__all__ = ["main"]
