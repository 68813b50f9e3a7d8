"""One reader for the project's YAML files: parse, note each key's line, check a schema.

A schema is plain data:
    None                      any value (a rule after the check looks at it)
    str, bool, int, float     a value of that type (int: a whole number, not true or false;
                              float: any number)
    (int, low, high)          a whole number from low to high (high None: no bound)
    (float, low, high)        a number above low and below high (high None: no bound)
    (str, pattern, what)      text the compiled pattern matches; `what` names it in errors
    {"a", "b"}                one of these values
    [item]                    a list of items; [item, ...]: a list of at least one
    {"key": s, "key?": s}     a mapping with these keys; "?" marks one that may be left out
                              (`key:` with no value counts as left out)
    ("mapping", key, value)   a mapping of free keys: `key`, a (str, pattern, what), checks
                              them, `value` their values; ("mapping", key, value, ...): at
                              least one entry
Errors are one sentence naming the file, the line and the key path, such as
"hub_config/site.yaml, line 47, profiles[1].slurm.walltime: '9' is not [D-]HH:MM:SS."
"""

from __future__ import annotations

from pathlib import Path

import yaml

TYPE_WORDS = {str: "text", bool: "true or false", int: "a whole number", float: "a number",
              list: "a list", dict: "a mapping"}


class CheckedYamlError(ValueError):
    """A YAML file is not what its schema says; the message is one sentence."""


class Document:
    """A checked file's data, and the line of each key path for the rules checked after."""

    def __init__(self, path: Path, data, lines: dict[str, int], error: type):
        self.path, self.data, self.lines, self.error = path, data, lines, error

    def line(self, key: str) -> int | None:
        """The line of a key path ("nodes[0].name"), or of the nearest one around it."""
        while key not in self.lines and key:
            key = key[:max(key.rfind("."), key.rfind("["), 0)]
        return self.lines.get(key)

    def fail(self, key: str, what: str):
        """Raise the error saying `what`, at the line of the key path `key`."""
        line = self.line(key)
        raise self.error(f"{self.path}, line {line}, {what}." if line else f"{self.path}: {what}.")


def load(path: str | Path, schema, error: type = CheckedYamlError) -> Document:
    """The file's data as plain Python values, checked against `schema`; raises `error`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror}).") from None
    loader, lines = yaml.SafeLoader(text), {}
    try:
        # No aliases: a file describes each value once, and an alias can nest without end.
        alias = next((e for e in yaml.parse(text, Loader=yaml.SafeLoader)
                      if isinstance(e, yaml.AliasEvent)), None)
        if alias is not None:
            raise error(f"{path}, line {alias.start_mark.line + 1}: YAML aliases (*name) are "
                        "not allowed; write the value out.")
        node = loader.get_single_node()
        if node is None:
            raise error(f"{path}: is empty.")
        data = _build(loader, node, "", lines)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path}: is not valid YAML{at} ({e.problem}).") from None
    except yaml.YAMLError:
        raise error(f"{path}: is not valid YAML.") from None
    finally:
        loader.dispose()
    document = Document(path, data, lines, error)
    _check(document, data, schema, "")
    return document


def _build(loader: yaml.SafeLoader, node, key: str, lines: dict[str, int]):
    """Plain values from a composed node, noting the line where each key path is."""
    lines.setdefault(key, node.start_mark.line + 1)
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, f"{key}[{i}]", lines) for i, item in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):
        return loader.construct_object(node)
    data = {}
    for key_node, value_node in node.value:
        name = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(name, (str, int)) or name in data:  # safe_load would keep the last
            problem = (f"{_join(key, name)} is given twice" if isinstance(name, (str, int))
                       else "a key must be a word or a number")
            raise yaml.MarkedYAMLError(problem=problem, problem_mark=key_node.start_mark)
        lines[_join(key, name)] = key_node.start_mark.line + 1
        data[name] = _build(loader, value_node, _join(key, name), lines)
    return data


def _join(key: str, name) -> str:
    return f"{key}.{name}" if key else str(name)


def _check(doc: Document, value, schema, key: str) -> None:
    def fail(what: str):
        doc.fail(key, f"{key or 'the file'}: {what}")

    if schema is None:
        return
    if isinstance(schema, type):
        if not _is(value, schema):
            fail(f"{value!r} is not {TYPE_WORDS[schema]}")
    elif isinstance(schema, tuple) and schema[0] in (int, float):
        kind, low, high = schema
        _check(doc, value, kind, key)
        if kind is int and not ((low is None or low <= value) and (high is None or value <= high)):
            fail(f"{value} is not between {low} and {high}" if high is not None
                 else f"{value} is less than {low}")
        if kind is float and not (low < value and (high is None or value < high)):
            fail(f"{value} is not above {low}" + (f" and below {high}" if high is not None else ""))
    elif isinstance(schema, tuple) and schema[0] is str:
        if not isinstance(value, str) or not schema[1].match(value):
            fail(f"{value!r} is not {schema[2]}")
    elif isinstance(schema, (set, frozenset)):
        if value not in schema:
            fail(f"{value!r} is not one of {', '.join(sorted(schema))}")
    elif isinstance(schema, list):
        _check(doc, value, list, key)
        if schema[1:] == [...] and not value:
            fail("needs at least one entry")
        for i, item in enumerate(value):
            _check(doc, item, schema[0], f"{key}[{i}]")
    elif isinstance(schema, tuple) and schema[0] == "mapping":
        _check(doc, value, dict, key)
        if schema[3:] == (...,) and not value:
            fail("needs at least one entry")
        for name, item in value.items():
            _check(doc, name, schema[1], _join(key, name))
            _check(doc, item, schema[2], _join(key, name))
    elif isinstance(schema, dict):
        _check_keys(doc, value, schema, key)
    else:
        raise TypeError(f"{schema!r} is not a schema")


def _check_keys(doc: Document, value, schema: dict, key: str) -> None:
    _check(doc, value, dict, key)
    optional = {k.rstrip("?"): k.endswith("?") for k in schema}
    for name in value:
        if name not in optional:
            doc.fail(_join(key, name), f"{_join(key, name)}: unknown key; {key or 'the file'} "
                                       f"may set only {', '.join(optional)}")
    for name, may_miss in optional.items():
        if may_miss and value.get(name, ...) is None:
            del value[name]  # `key:` with no value: as if left out
        if name in value:
            _check(doc, value[name], schema[name + "?" * may_miss], _join(key, name))
        elif not may_miss:
            doc.fail(key, f"{key or 'the file'} is missing '{name}'")


def _is(value, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)
