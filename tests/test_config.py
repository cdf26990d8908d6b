"""arch/config.py's schema covers every config key the registry reads, so that no family rule ever
sees an unchecked value (the matrix in test_edges.py drives bad values through each of them)."""

from __future__ import annotations

import inspect
import re

from moeprune.arch import families
from moeprune.arch.config import FIELDS
from moeprune.arch.families import FAMILIES


def test_every_key_the_registry_reads_is_in_the_schema() -> None:
    source = inspect.getsource(families)
    read = set(re.findall(r"cfg(?:\.get\(|\[)\"([A-Za-z0-9_]+)\"", source))
    for fam in FAMILIES.values():
        read |= set(fam.count_keys) | set(fam.topk_keys)
    assert read, "no keys found: the pattern no longer matches how rules read the config"
    missing = sorted(read - set(FIELDS))
    assert missing == [], f"family rules read {missing}: add them to arch/config.py's FIELDS"
