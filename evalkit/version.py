"""evalkit's version, in a module of its own: code inside the package reads it without importing the package root
(whose lazy attributes import the stages)."""

__version__ = "0.1.0"
