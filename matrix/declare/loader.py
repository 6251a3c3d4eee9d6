"""Load the matrix declaration (``matrix/axes.yaml``) into :class:`matrix.declare.config.Matrix`.

Three passes, each failing with a :class:`~matrix.errors.ConfigError` that names the file, the
line, the dotted field path (``axes.engine.transformers.versions.latest``) and the offending
value:

1. YAML: the node tree is composed with PyYAML's safe loader and turned into plain data by hand,
   recording the line of every field and rejecting duplicate keys (which PyYAML would otherwise
   resolve silently by keeping the last one). Aliases are bounded before anything is expanded:
   at most ``MAX_ALIASES`` of them, and at most ``MAX_VALUES`` values once they are expanded (a
   few nested anchors can otherwise stand for billions of values: an "alias bomb").
2. Structure: ``matrix/axes.schema.json`` (JSON Schema, Draft 2020-12), compiled once per process.
3. Meaning: versions, specifiers and requirements parse; constraints name known axes and
   components and can match something; constraints do not exclude a whole axis; the default
   selection (components, runners and models with ``default: true``) yields at least one cell.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from matrix.declare.config import (
    AXES,
    BotSettings,
    Component,
    Condition,
    Constraint,
    ImageConfig,
    Matrix,
    Model,
    Runner,
    VersionRule,
)
from matrix.errors import ConfigError

__all__ = ["load", "load_default", "parse_condition", "satisfiable", "DEFAULT_PATH", "SCHEMA_PATH", "CAPABILITIES"]

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "axes.yaml"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "axes.schema.json"
CAPABILITIES = frozenset({"cpu", "gpu", "docker", "node", "compile", "network", "ollama"})
"""What a runner can provide and a component or model can need."""

DOCUMENT = "(document)"
"""Field path used for the document as a whole (empty file, YAML syntax errors)."""

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_CONDITION = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?P<spec>.*)", re.S)
_RULE_ONLY = ("floor", "below", "prereleases", "per")
MAX_ALIASES = 100
"""Aliases (``*name``) allowed in one file; the repository's own axes.yaml uses none."""
MAX_VALUES = 50_000
"""Values (scalars, lists, mappings) allowed after aliases are expanded: about 100 times the
repository's own axes.yaml."""


# --------------------------------------------------------------------------------------------
# public API


def load(path: str | Path) -> Matrix:
    """Read, validate and build the matrix declared in ``path``; raise ConfigError if bad."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, DOCUMENT, file, f"cannot read: {exc}") from None
    data, lines = _parse(text, file)
    _validate_schema(data, file, lines)
    return _Builder(file, data, lines).build()


def load_default() -> Matrix:
    """The repository's own ``matrix/axes.yaml``."""
    return load(DEFAULT_PATH)


def parse_condition(axis: str, text: str) -> Condition:
    """``"llama-cpp-python<0.3"`` -> ``Condition(axis, "llama-cpp-python", "<0.3")``.

    Raises ValueError for a malformed name or specifier; the specifier is normalized
    (``str(SpecifierSet(...))``), empty when the condition names the component only.
    """
    m = _CONDITION.fullmatch(text.strip())
    if not m:
        raise ValueError("expected a component name, optionally followed by a version specifier")
    spec = m["spec"].strip()
    if spec:
        if "===" in spec:
            raise ValueError("arbitrary equality (===) is not supported in conditions")
        try:
            spec = str(SpecifierSet(spec))
        except InvalidSpecifier:
            raise ValueError(f"invalid version specifier {spec!r} (PEP 440, e.g. '<0.3' or '>=1,<2')") from None
    return Condition(axis, m["name"], spec)


# --------------------------------------------------------------------------------------------
# pass 1: YAML -> plain data + line of every field


def _dot(path: tuple) -> str:
    return ".".join(str(p) for p in path) if path else DOCUMENT


def _line(lines: dict[str, int], field: str) -> int | None:
    """Line of ``field``, else of its nearest ancestor that has one."""
    while field:
        if field in lines:
            return lines[field]
        field = field.rpartition(".")[0]
    return lines.get(DOCUMENT)


def _count_aliases(text: str, file: str) -> None:
    """Refuse a file with more than MAX_ALIASES aliases, naming the line of the first one over."""
    seen = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            seen += 1
            if seen > MAX_ALIASES:
                raise ConfigError(
                    file,
                    DOCUMENT,
                    f"*{event.anchor}",
                    f"more than {MAX_ALIASES} aliases: refused (an alias bomb?)",
                    line=event.start_mark.line + 1,
                )


def _parse(text: str, file: str) -> tuple[Any, dict[str, int]]:
    loader = _SafeLoader(text)
    try:
        _count_aliases(text, file)
        node = loader.get_single_node()
        if node is None:
            return None, {DOCUMENT: 1}
        lines: dict[str, int] = {DOCUMENT: node.start_mark.line + 1}
        data = _Walker(loader, file, lines).value(node, ())
        return data, lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        text_lines = text.splitlines()
        snippet = text_lines[mark.line].strip() if mark and mark.line < len(text_lines) else ""
        message = f"malformed YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context:
            cm = exc.context_mark
            where = f" started at line {cm.line + 1}" if cm and mark and cm.line != mark.line else ""
            message += f" ({exc.context}{where})"
        raise ConfigError(file, DOCUMENT, snippet, message, line=line) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no mark, a position
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise ConfigError(
            file, DOCUMENT, None, f"malformed YAML: unacceptable character {char}: {exc.reason}", line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, DOCUMENT, None, "malformed YAML: " + " ".join(str(exc).split())) from None
    finally:
        loader.dispose()


class _Walker:
    """Node tree -> dicts, lists and scalars; records ``lines``; rejects duplicate keys."""

    def __init__(self, loader, file: str, lines: dict[str, int]):
        self.loader = loader
        self.file = file
        self.lines = lines
        self.active: set[int] = set()
        self.values = 0

    def error(self, path: tuple, value: object, message: str, node) -> ConfigError:
        return ConfigError(self.file, _dot(path), value, message, line=node.start_mark.line + 1)

    def value(self, node, path: tuple) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            line = _line(self.lines, _dot(path)) or node.start_mark.line + 1
            raise ConfigError(
                self.file,
                _dot(path),
                None,
                f"aliases expand to more than {MAX_VALUES} values: refused (an alias bomb?)",
                line=line,
            )
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node)
        if id(node) in self.active:
            raise self.error(path, None, "recursive alias", node)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    raise self.error(path, node.tag, "unsupported tag on a list", node)
                out = []
                for i, item in enumerate(node.value):
                    self.lines[_dot(path + (i,))] = item.start_mark.line + 1
                    out.append(self.value(item, path + (i,)))
                return out
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def mapping(self, node, path: tuple) -> dict:
        if node.tag != _MAP:
            raise self.error(path, node.tag, "unsupported tag on a mapping", node)
        merged: dict = {}
        explicit = []
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                # ``<<: *anchor`` (or a list of anchors): earlier ones win, explicit keys win over all.
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        raise self.error(path + ("<<",), None, "a merge key (<<) takes mappings only", src)
                    for k, v in self.value(src, path).items():
                        merged.setdefault(k, v)
            else:
                explicit.append((knode, vnode))
        out: dict = {}
        for knode, vnode in explicit:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.error(path, None, "mapping keys must be plain strings", knode)
            key = self.loader.construct_object(knode)
            if not isinstance(key, str):
                raise self.error(
                    path + (key,),
                    key,
                    f"mapping keys must be strings; YAML reads this key as {type(key).__name__} {key!r}: quote it",
                    knode,
                )
            kpath = path + (key,)
            field = _dot(kpath)
            if key in out:
                raise self.error(kpath, key, f"duplicate key (first at line {self.lines.get(field)})", knode)
            self.lines[field] = knode.start_mark.line + 1
            out[key] = self.value(vnode, kpath)
        for k, v in merged.items():
            out.setdefault(k, v)
        return out


# --------------------------------------------------------------------------------------------
# pass 2: JSON Schema


@functools.cache
def _validator():
    """The compiled Draft 2020-12 validator of ``axes.schema.json`` (once per process)."""
    from jsonschema import Draft202012Validator  # imported here: only loading needs it

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {value!r}".lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return type(value).__name__


def _validate_schema(data: Any, file: str, lines: dict[str, int]) -> None:
    errors = [_translate(e, file, lines) for e in _validator().iter_errors(data)]
    if errors:
        # the first one in the file, deepest first on the same line
        raise min(errors, key=lambda e: (e.line or 0, -e.field.count(".")))


def _translate(err, file: str, lines: dict[str, int]) -> ConfigError:
    """A jsonschema ValidationError as a ConfigError pointing at the offending field."""
    path = tuple(err.absolute_path)
    kind = err.validator
    custom = err.schema.get("errorMessage", {}) if isinstance(err.schema, dict) else {}
    value = err.instance
    if "propertyNames" in err.schema_path:  # a key is bad: the error sits on the parent
        path += (err.instance,)
    message = custom.get(kind)
    if kind == "type":
        if value is None and "null" in custom:
            message = custom["null"]
        else:
            expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            message = f"expected {' or '.join(_JSON_TYPES[t] for t in expected)}, got {_type_name(value)}"
            if "string" in expected and isinstance(value, (int, float)):
                message += ": quote it (YAML reads unquoted 3.10 as the number 3.1)"
    elif kind == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = next(k for k in value if k not in allowed)
        path += (extra,)
        value = extra
        message = message or f"unknown key (allowed: {', '.join(allowed)})"
    elif kind == "required":
        missing = next(k for k in err.validator_value if k not in value)
        path += (missing,)
        value = None
        message = message or "missing required key"
    elif kind == "uniqueItems":
        seen: list = []
        for i, item in enumerate(value):
            if item in seen:
                path += (i,)
                value = item
                break
            seen.append(item)
        message = message or f"duplicate item (first at {_dot(path[:-1] + (seen.index(value),))})"
    elif kind in ("minItems", "minProperties", "minLength"):
        message = message or "must not be empty"
    elif kind == "minimum":
        message = message or f"must be at least {err.validator_value}"
    elif kind == "enum":
        message = message or f"must be one of: {', '.join(map(str, err.validator_value))}"
    elif kind == "pattern":
        message = message or f"must match {err.validator_value!r}"
    else:
        message = message or err.message
    field = _dot(path)
    return ConfigError(file, field, value, message, line=_line(lines, field))


# --------------------------------------------------------------------------------------------
# pass 3: meaning, and the dataclasses


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _above(v: Version) -> Version:
    """A version just above ``v`` (below any other boundary one would write)."""
    epoch = f"{v.epoch}!" if v.epoch else ""
    return Version(epoch + ".".join(map(str, v.release + (0, 0, 0, 0, 0, 1))))


def _below(v: Version) -> Version | None:
    """A version just below ``v``'s release, or None below 0."""
    release = list(v.release)
    while release and release[-1] == 0:
        release.pop()
    if not release:
        return None
    release[-1] -= 1
    epoch = f"{v.epoch}!" if v.epoch else ""
    return Version(epoch + ".".join(map(str, release + [999999])))


def satisfiable(spec: SpecifierSet) -> bool:
    """Whether any version (pre-releases included) satisfies ``spec``.

    The versions satisfying a specifier set form intervals whose ends are the versions written
    in it; trying each such version, a version just above and one just below, and the extremes
    finds a member of every non-empty interval one would write in practice.
    """
    candidates = {Version("0"), Version("999999")}
    for s in spec:
        v = _version(s.version.removesuffix(".*"))
        if v is None:
            continue
        candidates.add(v)
        candidates.add(Version(v.base_version))
        candidates.add(_above(v))
        below = _below(v)
        if below is not None:
            candidates.add(below)
    return any(spec.contains(c, prereleases=True) for c in candidates)


class _Builder:
    def __init__(self, file: str, data: dict, lines: dict[str, int]):
        self.file = file
        self.data = data
        self.lines = lines

    def error(self, field: str, value: object, message: str) -> ConfigError:
        return ConfigError(self.file, field, value, message, line=_line(self.lines, field))

    # --- sections

    def build(self) -> Matrix:
        reference = self.reference(self.data.get("reference", {}))
        runners = tuple(self.runner(n, r) for n, r in self.data["runners"].items())
        models = tuple(self.model(n, m) for n, m in self.data["models"].items())
        axes = {axis: tuple(self.component(axis, n, c) for n, c in self.data["axes"][axis].items()) for axis in AXES}
        self.runnable_somewhere(runners, models, axes)
        constraints = tuple(self.constraint(i, c, axes) for i, c in enumerate(self.data.get("constraints", [])))
        excluded = self.outright_exclusions(constraints, axes)
        self.default_selection(runners, models, axes, excluded)
        return Matrix(
            source=self.file,
            axes=axes,
            runners=runners,
            models=models,
            constraints=constraints,
            reference=reference,
            suite_version=self.data["suite_version"],
            bot=BotSettings(close_after=self.data.get("bot", {}).get("close_after", 3)),
            lines=self.lines,
        )

    def reference(self, ref: dict) -> dict[str, str]:
        for pkg, ver in ref.items():
            if _version(ver) is None:
                raise self.error(f"reference.{pkg}", ver, "invalid version (PEP 440)")
        return dict(ref)

    def requirements(self, field: str, reqs: list[str]) -> tuple[str, ...]:
        for i, req in enumerate(reqs):
            try:
                Requirement(req)
            except InvalidRequirement as exc:
                raise self.error(
                    f"{field}.{i}", req, f"invalid requirement (PEP 508): {str(exc).splitlines()[0]}"
                ) from None
        return tuple(reqs)

    def runner(self, name: str, r: dict) -> Runner:
        base = f"runners.{name}"
        return Runner(
            name=name,
            labels=tuple(r["labels"]),
            provides=frozenset(r["provides"]),
            pins=self.requirements(f"{base}.pins", r.get("pins", [])),
            python=r.get("python", "3.11"),
            default=r.get("default", True),
            environment=r.get("environment", "uv"),
            image=self.image_config(r.get("image", {})),
        )

    def image_config(self, i: dict) -> ImageConfig:
        return ImageConfig(
            base=i.get("base", ImageConfig.base),
            engines=tuple(sorted(i.get("engines", {}).items())),
            memory=str(i.get("memory", ImageConfig.memory)),
            pids=i.get("pids", ImageConfig.pids),
            seconds=i.get("seconds", ImageConfig.seconds),
        )

    def model(self, name: str, m: dict) -> Model:
        base = f"models.{name}"
        kind = m["kind"]
        if kind == "tiny" and "arch" not in m:
            raise self.error(f"{base}.arch", None, "a tiny model needs arch (e.g. qwen2, llama)")
        if kind == "tiny" and "hub_id" in m:
            raise self.error(
                f"{base}.hub_id", m["hub_id"], "a tiny model is built by the project: hub_id is for kind hub"
            )
        if kind == "hub" and "hub_id" not in m:
            raise self.error(f"{base}.hub_id", None, "a hub model needs hub_id (owner/name)")
        return Model(
            name=name,
            kind=kind,
            arch=m.get("arch"),
            hub_id=m.get("hub_id"),
            needs=frozenset(m.get("needs", ())),
            default=m.get("default", True),
        )

    def component(self, axis: str, name: str, c: dict) -> Component:
        base = f"axes.{axis}.{name}"
        tag_format = c.get("tag_format", "v{version}")
        try:
            tag_format.format(version="1.0")
        except (KeyError, IndexError, ValueError) as exc:
            raise self.error(
                f"{base}.tag_format", tag_format, f"tag_format may only use the {{version}} placeholder ({exc!r})"
            ) from None
        ecosystem = c.get("ecosystem", "pypi")
        if ecosystem == "npm":
            self.npm_component(base, c)
        return Component(
            axis=axis,
            name=name,
            packages=tuple(c["packages"]),
            versions=self.version_rule(f"{base}.versions", c["versions"]),
            extras=tuple(c.get("extras", ())),
            requires=self.requirements(f"{base}.requires", c.get("requires", [])),
            needs=frozenset(c.get("needs", ("cpu",))),
            repo=c.get("repo"),
            tag_format=tag_format,
            default=c.get("default", True),
            probe=tuple((role, tuple(names)) for role, names in c.get("probe", {}).items()),
            ecosystem=ecosystem,
            build=tuple(sorted((str(k), str(v)) for k, v in c.get("build", {}).get("env", {}).items())),
            build_server=bool(c.get("build", {}).get("server", False)),
            upstream_issues=self.upstream_issues(base, c),
            **self.corpus(base, ecosystem, c),
        )

    def corpus(self, base: str, ecosystem: str, c: dict) -> dict:
        """The corpus fields of an ``ecosystem: corpus`` component (the schema requires ``corpus``)."""
        if "corpus" in c and ecosystem != "corpus":
            raise self.error(f"{base}.corpus", c["corpus"], "corpus is only for components with ecosystem: corpus")
        if ecosystem != "corpus":
            return {}
        for key in ("extras", "requires", "build", "probe"):
            if key in c:
                raise self.error(f"{base}.{key}", c[key], "a corpus component installs nothing: it has no " + key)
        templates = c["corpus"].get("templates")
        return {"corpus_path": c["corpus"]["path"], "corpus_templates": tuple(templates) if templates else None}

    def upstream_issues(self, base: str, c: dict) -> bool:
        """``upstream_issues: true`` allows the bot to file in the component's ``repo``, so it needs one."""
        allowed = bool(c.get("upstream_issues", False))
        if allowed and not c.get("repo"):
            raise self.error(f"{base}.upstream_issues", True, "upstream issues need the component's repo (owner/name)")
        return allowed

    def npm_component(self, base: str, c: dict) -> None:
        """An npm component: one npm package, run by Node (so a runner must provide ``node``)."""
        if len(c["packages"]) != 1:
            raise self.error(
                f"{base}.packages",
                c["packages"],
                "an npm component names exactly one npm package (its dependencies come from npm)",
            )
        for key in ("extras", "requires"):
            if key in c:
                raise self.error(f"{base}.{key}", c[key], f"{key} applies to pypi components only")
        needs = c.get("needs", ["cpu"])
        if "node" not in needs:
            field = f"{base}.needs" if "needs" in c else f"{base}.ecosystem"
            raise self.error(
                field, needs if "needs" in c else "npm", "an npm component is run by Node: its needs must include node"
            )

    def version_rule(self, base: str, v: dict) -> VersionRule:
        if "explicit" in v and "latest" in v:
            raise self.error(
                base, v, "both explicit and latest given: list exact versions or discover the latest, not both"
            )
        if "explicit" not in v and "latest" not in v:
            raise self.error(base, v, "needs explicit (exact versions) or latest (how many releases to discover)")
        if "explicit" in v:
            for key in _RULE_ONLY:
                if key in v:
                    raise self.error(
                        f"{base}.{key}", v[key], f"{key} applies to latest only; explicit lists exact versions"
                    )
            seen: dict[Version, int] = {}
            for i, text in enumerate(v["explicit"]):
                ver = _version(text)
                if ver is None:
                    raise self.error(f"{base}.explicit.{i}", text, "invalid version (PEP 440)")
                if ver in seen:
                    raise self.error(
                        f"{base}.explicit.{i}",
                        text,
                        f"same version as {base}.explicit.{seen[ver]} ({v['explicit'][seen[ver]]!r})",
                    )
                seen[ver] = i
            return VersionRule(explicit=tuple(v["explicit"]))
        bounds = {}
        for key in ("floor", "below"):
            if key in v:
                bounds[key] = _version(v[key])
                if bounds[key] is None:
                    raise self.error(f"{base}.{key}", v[key], "invalid version (PEP 440)")
        floor, below = bounds.get("floor"), bounds.get("below")
        if floor is not None and below is not None and not floor < below:
            raise self.error(
                f"{base}.below", v["below"], f"empty version range: below must be greater than floor {v['floor']!r}"
            )
        return VersionRule(
            latest=int(v["latest"]),
            floor=v.get("floor"),
            below=v.get("below"),
            prereleases=v.get("prereleases", False),
            per=v.get("per", "release"),
        )

    def runnable_somewhere(self, runners, models, axes) -> None:
        """Every component and model can run on at least one runner (default or not)."""
        provided = [r.provides for r in runners]
        offered = ", ".join(f"{r.name}: {', '.join(sorted(r.provides))}" for r in runners)
        things = [(f"models.{m.name}", m.needs) for m in models]
        things += [(f"axes.{c.axis}.{c.name}", c.needs) for comps in axes.values() for c in comps]
        for base, needs in things:
            if not any(needs <= p for p in provided):
                field = f"{base}.needs" if f"{base}.needs" in self.lines else base
                raise self.error(field, sorted(needs), f"no runner provides all of these (runners provide {offered})")

    # --- constraints

    def constraint(self, i: int, c: dict, axes: dict[str, tuple[Component, ...]]) -> Constraint:
        base = f"constraints.{i}.exclude"
        by_axis: dict[str, tuple[str, str, str]] = {}  # axis -> (component, specifier, field)
        for axis, raw in c["exclude"].items():
            items = (
                [(f"{base}.{axis}", raw)]
                if isinstance(raw, str)
                else [(f"{base}.{axis}.{j}", text) for j, text in enumerate(raw)]
            )
            for field, text in items:
                try:
                    cond = parse_condition(axis, text)
                except ValueError as exc:
                    raise self.error(field, text, str(exc)) from None
                names = [comp.name for comp in axes[axis]]
                if cond.component not in names:
                    raise self.error(
                        field, text, f"unknown component {cond.component!r} on axis {axis} (known: {', '.join(names)})"
                    )
                if axis in by_axis:
                    first, spec, first_field = by_axis[axis]
                    if first != cond.component:
                        raise self.error(
                            field,
                            text,
                            f"can never match: {first_field} names {first!r} on the same axis; "
                            "a cell has one component per axis",
                        )
                    joined = ",".join(s for s in (spec, cond.specifier) if s)
                    by_axis[axis] = (first, str(SpecifierSet(joined)), first_field)
                else:
                    by_axis[axis] = (cond.component, cond.specifier, field)
                comp = next(x for x in axes[axis] if x.name == cond.component)
                self.check_matchable(field, text, comp, by_axis[axis][1])
        conditions = tuple(Condition(axis, comp, spec) for axis, (comp, spec, _) in by_axis.items())
        return Constraint(conditions=conditions, reason=c["reason"])

    def check_matchable(self, field: str, text: str, comp: Component, spec_text: str) -> None:
        """Raise when no version of ``comp`` the rule can select satisfies ``spec_text``."""
        if not spec_text:
            return
        spec = SpecifierSet(spec_text)
        rule = comp.versions
        if rule.explicit is not None:
            if not any(spec.contains(v, prereleases=True) for v in rule.explicit):
                raise self.error(
                    field,
                    text,
                    f"can never match: no explicit version of {comp.name} "
                    f"({', '.join(rule.explicit)}) satisfies {spec_text!r}",
                )
            return
        bounded = spec_text
        bounded += f",>={rule.floor}" if rule.floor else ""
        bounded += f",<{rule.below}" if rule.below else ""
        if not satisfiable(SpecifierSet(bounded)):
            extra = (
                f" within the versions rule ({bounded.removeprefix(spec_text).lstrip(',')})"
                if bounded != spec_text
                else ""
            )
            raise self.error(field, text, f"can never match: no version satisfies {spec_text!r}{extra}")

    def outright_exclusions(self, constraints, axes) -> dict[str, set[str]]:
        """Components excluded whatever the other axes are; error when that is a whole axis."""
        excluded: dict[str, set[str]] = {axis: set() for axis in AXES}
        left = {
            (c.axis, c.name): set(c.versions.explicit)
            for comps in axes.values()
            for c in comps
            if c.versions.explicit is not None
        }
        for i, con in enumerate(constraints):
            if len(con.conditions) != 1:
                continue
            cond = con.conditions[0]
            key = (cond.axis, cond.component)
            if not cond.specifier:
                excluded[cond.axis].add(cond.component)
            elif key in left:
                spec = SpecifierSet(cond.specifier)
                left[key] = {v for v in left[key] if not spec.contains(v, prereleases=True)}
                if not left[key]:
                    excluded[cond.axis].add(cond.component)
            names = [c.name for c in axes[cond.axis]]
            if excluded[cond.axis] >= set(names):
                field = f"constraints.{i}.exclude.{cond.axis}"
                raise self.error(
                    field,
                    self.data["constraints"][i]["exclude"][cond.axis],
                    f"constraints exclude every component of axis {cond.axis} "
                    f"({', '.join(names)}): no cell could be planned",
                )
        return excluded

    # --- the default selection

    def default_selection(self, runners, models, axes, excluded) -> None:
        """The default matrix must yield a cell: ``needs`` of its parts within one runner's ``provides``."""
        d_runners = [r for r in runners if r.default]
        if not d_runners:
            raise self.error("runners", [r.name for r in runners], "no default runner: set default: true on one")
        d_models = [m for m in models if m.default]
        if not d_models:
            raise self.error("models", [m.name for m in models], "no default model: set default: true on one")
        provides = ", ".join(f"{r.name}: {', '.join(sorted(r.provides))}" for r in d_runners)
        if not any(m.needs <= r.provides for m in d_models for r in d_runners):
            raise self.error(
                "models",
                [m.name for m in d_models],
                f"no default model can run on a default runner (default runners provide {provides})",
            )
        for axis in AXES:
            usable = [c for c in axes[axis] if c.default and c.name not in excluded[axis]]
            if not usable:
                raise self.error(
                    f"axes.{axis}",
                    [c.name for c in axes[axis]],
                    "no default component: set default: true on one that no constraint excludes",
                )
            if not any(c.needs <= r.provides for c in usable for r in d_runners):
                needs = "; ".join(f"{c.name} needs {', '.join(sorted(c.needs))}" for c in usable)
                raise self.error(
                    f"axes.{axis}",
                    [c.name for c in usable],
                    f"no default component that a default runner can run ({needs}; default runners provide {provides})",
                )
        for r in d_runners:
            if any(m.needs <= r.provides for m in d_models) and all(
                any(c.default and c.name not in excluded[axis] and c.needs <= r.provides for c in axes[axis])
                for axis in AXES
            ):
                return
        raise self.error(
            "runners",
            [r.name for r in d_runners],
            "no default runner can run a whole default cell (a default model and a default component of every axis)",
        )
