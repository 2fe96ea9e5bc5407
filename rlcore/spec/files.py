"""Spec files: the one loader of YAML/JSON spec files, bounded against what would exhaust memory."""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from rlcore.spec.job import JobSpec

MAX_SPEC_FILE_BYTES = 16 * 1024 * 1024
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 1_000_000  # after aliases are expanded: a 10,000-row inline dataset is ~50,000


class SpecFileError(ValueError):
    """A spec file cannot be read as a spec; the message says what is wrong and what to do."""


def load_spec_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a dict, refusing what would exhaust memory.

    The one loader of spec files (CLI, client, local runs, demo). A file above ``MAX_SPEC_FILE_BYTES``, more
    than ``MAX_YAML_ALIASES`` aliases or more than ``MAX_YAML_NODES`` nodes once aliases are expanded (a
    "billion laughs" file is a few hundred bytes), recursive aliases and runaway nesting are refused
    before any Python object is built.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_SPEC_FILE_BYTES:
            raise SpecFileError(
                f"{path} is {size} bytes; spec files are limited to {MAX_SPEC_FILE_BYTES}: "
                "put the dataset in a JSONL file (rlft submit --file DATA.jsonl)"
            )
        with open(path, encoding="utf-8") as f:
            loader = _BoundedLoader(f)
            try:
                node = loader.get_single_node()
                if node is None:
                    data = None
                else:
                    _check_expanded_size(node, str(path))
                    data = loader.construct_document(node)
            finally:
                loader.dispose()
    except FileNotFoundError:
        raise SpecFileError(f"no such spec file: {path}") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise SpecFileError(f"{path} nests too deeply to be a job spec") from None
    except yaml.YAMLError as e:
        raise SpecFileError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"{path}: a job spec is a mapping with 'model', 'dataset', ... at the top level")
    return data


def load_spec(path: str) -> JobSpec:
    """Read and validate a YAML or JSON spec file."""
    return JobSpec.model_validate(load_spec_data(path))


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and reads 1e-6 as a number (YAML 1.2), not as a string."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise SpecFileError(
                    f"the spec uses more than {MAX_YAML_ALIASES} YAML aliases (*name): write the values out"
                )
        return super().compose_node(parent, index)


# PyYAML follows YAML 1.1, where a float needs a dot: `learning_rate: 1e-6` would be the string "1e-6",
# which a strictly typed spec refuses. Resolve YAML 1.2 exponent floats as floats.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expanded_size(root: Any, path: str) -> None:
    """Count the nodes the document has once every alias is expanded; refuse cycles and huge totals."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    # Iterative post-order walk: (node, children pushed?)
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if not isinstance(node, yaml.CollectionNode):
            sizes[key] = 1
            continue
        children = (
            [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        if expanded:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise SpecFileError(
                    f"{path} expands to more than {MAX_YAML_NODES} values (YAML aliases): write it without "
                    "aliases, or put the dataset in a JSONL file"
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise SpecFileError(f"{path} has a YAML alias that contains itself")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
