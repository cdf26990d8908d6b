"""Model-family knowledge: the only package that names a family."""

from moeprune.arch.families import FAMILIES, family_for_config, supported
from moeprune.arch.spec import Family, Groups, ScaledInput

__all__ = ["FAMILIES", "Family", "Groups", "ScaledInput", "family_for_config", "supported"]
