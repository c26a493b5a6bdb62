"""A test config from a base dict with dotted-key overrides (Python values, not YAML text)."""

import json

from forgetless.config import Config, from_dict


def with_overrides(raw: dict, **over) -> Config:
    raw = json.loads(json.dumps(raw))  # a deep copy: the base stays as written
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return from_dict(raw)
