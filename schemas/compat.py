"""Backward-compatibility check between two versions of a published JSON Schema.

Incompatible: a removed property, a new required property, a changed type, a removed enum
(or const) value, a removed union branch. Adding optional properties, enum values or union
branches is compatible.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Human-readable descriptions of every incompatible change from ``old`` to ``new``."""
    problems: list[str] = []
    _compare(old, new, old, new, "$", problems, set())
    return problems


def _resolve(node: Schema, root: Schema) -> Schema:
    # Only local references ("#/$defs/Name") occur in pydantic's output.
    seen = 0
    while "$ref" in node and seen < 50:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node


def _types(node: Schema) -> set[str]:
    kind = node.get("type")
    if kind is None:
        return set()
    return {kind} if isinstance(kind, str) else set(kind)


def _branches(node: Schema) -> list[Schema] | None:
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches: list[Schema] = node[key]
            return branches
    return None


def _label(branch: Schema, root: Schema) -> str:
    """A stable identity for a union branch: its ref, its discriminator const, or its type."""
    if "$ref" in branch:
        return str(branch["$ref"])
    resolved = _resolve(branch, root)
    for key in ("kind", "type"):
        const = resolved.get("properties", {}).get(key, {}).get("const")
        if const is not None:
            return f"{key}={const}"
    if "oneOf" in resolved or "anyOf" in resolved:
        return "union"
    return "type=" + (",".join(sorted(_types(resolved))) or "any")


def _compare(
    old: Schema,
    new: Schema,
    old_root: Schema,
    new_root: Schema,
    path: str,
    problems: list[str],
    seen: set[tuple[str, str, str]],
) -> None:
    key = (path, str(old.get("$ref")), str(new.get("$ref")))
    if key in seen:
        return
    seen.add(key)
    old, new = _resolve(old, old_root), _resolve(new, new_root)

    old_branches, new_branches = _branches(old), _branches(new)
    if old_branches is not None or new_branches is not None:
        olds = old_branches if old_branches is not None else [old]
        news = new_branches if new_branches is not None else [new]
        by_label = {_label(b, new_root): b for b in news}
        for branch in olds:
            label = _label(branch, old_root)
            if label not in by_label:
                problems.append(f"{path}: union branch {label} removed")
            else:
                branch_path = path if label.startswith("#") else f"{path}<{label}>"
                _compare(branch, by_label[label], old_root, new_root, branch_path, problems, seen)
        return

    if _types(old) != _types(new) and _types(old):
        problems.append(f"{path}: type changed from {sorted(_types(old))} to {sorted(_types(new))}")
        return
    if "const" in old and old.get("const") != new.get("const"):
        problems.append(f"{path}: const changed from {old['const']!r} to {new.get('const')!r}")
    if "enum" in old:
        removed = [v for v in old["enum"] if v not in new.get("enum", [])]
        if removed:
            problems.append(f"{path}: enum values removed: {removed}")

    old_props: dict[str, Schema] = old.get("properties", {})
    new_props: dict[str, Schema] = new.get("properties", {})
    for name, prop in old_props.items():
        if name not in new_props:
            problems.append(f"{path}.{name}: property removed")
        else:
            _compare(prop, new_props[name], old_root, new_root, f"{path}.{name}", problems, seen)
    added_required = set(new.get("required", [])) - set(old.get("required", []))
    for name in sorted(added_required):
        problems.append(f"{path}.{name}: property is newly required")

    for keyword in ("items", "additionalProperties"):
        if isinstance(old.get(keyword), dict) and isinstance(new.get(keyword), dict):
            _compare(old[keyword], new[keyword], old_root, new_root, f"{path}[{keyword}]", problems, seen)
