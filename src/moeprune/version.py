"""The package version: one place, read by the package, pyproject (dynamic version) and every
artefact that records which moeprune wrote it."""

__version__ = "0.1.0"
