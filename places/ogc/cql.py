"""CQL2 text filters (and simple ``name=value`` property filters) as SQL conditions.

pygeofilter parses the text into its syntax tree; this module walks that tree and writes a
condition on the queryables a collection declares, with every value bound as a parameter.
Nothing the client writes reaches the SQL text: an attribute is looked up in the
collection's queryables (unknown names are refused), an operator is taken from a fixed
table, and literals become ``%(cql_N)s`` parameters.

What is translated (the conformance classes ``places.ogc.conformance`` declares):

=======================  ==================================================================
CQL2                     SQL
=======================  ==================================================================
``AND``, ``OR``, ``NOT`` the same
``= <> < <= > >=``       the same, the literal cast to the queryable's type
``LIKE``, ``BETWEEN``,   the same (advanced comparison operators)
``IN``, ``IS NULL``
``S_INTERSECTS`` …       ``ST_Intersects`` …, for the eight spatial predicates, against a
                         WKT geometry or ``BBOX(…)`` in CRS84
=======================  ==================================================================

A queryable of kind ``array`` (a place's denominations) takes ``=`` as "contains".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from lark.exceptions import LarkError
from pygeofilter import ast, values
from pygeofilter.parsers.cql2_text import parse as parse_cql2_text


class FilterError(ValueError):
    """A filter that cannot be used; the message says why, for the client."""


@dataclass(frozen=True)
class Queryable:
    """A property a filter may name: its SQL on the collection's alias and its kind."""

    name: str
    sql: str
    kind: str  # string, integer, number, date, date-time, array, geometry
    description: str = ""
    enum: tuple[str, ...] = ()

    def json_schema(self) -> dict[str, Any]:
        """The queryable as a JSON Schema property (OGC API – Features Part 3)."""
        schema: dict[str, Any]
        if self.kind == "geometry":
            schema = {"$ref": "https://geojson.org/schema/Geometry.json"}
        elif self.kind in ("date", "date-time"):
            schema = {"type": "string", "format": self.kind}
        elif self.kind == "array":
            schema = {"type": "array", "items": {"type": "string"}}
        else:
            schema = {"type": self.kind}
        if self.enum:
            schema["enum"] = list(self.enum)
        schema["title"] = self.name
        if self.description:
            schema["description"] = self.description
        return schema


SQL_TYPES = {
    "string": "text",
    "integer": "bigint",
    "number": "double precision",
    "date": "date",
    "date-time": "timestamptz",
    "array": "text",
}
COMPARISONS: dict[type, str] = {
    ast.Equal: "=",
    ast.NotEqual: "<>",
    ast.LessThan: "<",
    ast.LessEqual: "<=",
    ast.GreaterThan: ">",
    ast.GreaterEqual: ">=",
}
SPATIAL: dict[type, str] = {
    ast.GeometryIntersects: "ST_Intersects",
    ast.GeometryDisjoint: "ST_Disjoint",
    ast.GeometryContains: "ST_Contains",
    ast.GeometryWithin: "ST_Within",
    ast.GeometryTouches: "ST_Touches",
    ast.GeometryCrosses: "ST_Crosses",
    ast.GeometryOverlaps: "ST_Overlaps",
    ast.GeometryEquals: "ST_Equals",
}
# A filter is a request parameter: bounded, so that one request cannot ask PostgreSQL for a
# condition of thousands of terms.
MAX_FILTER_CHARS = 4000
MAX_TERMS = 100


@dataclass
class Condition:
    """A translated filter: SQL on the collection's alias, its parameters, and the
    queryables it names (a filter on ``status`` lifts the collection's default status)."""

    sql: str = "true"
    params: dict[str, Any] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)


class _Writer:
    def __init__(self, queryables: dict[str, Queryable], prefix: str) -> None:
        self.queryables = queryables
        self.prefix = prefix
        self.params: dict[str, Any] = {}
        self.names: set[str] = set()
        self.terms = 0

    def bind(self, value: Any, kind: str) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return f"%({name})s::{SQL_TYPES[kind]}"

    def attribute(self, node: Any) -> Queryable:
        if not isinstance(node, ast.Attribute):
            raise FilterError("the left side of a comparison must be a queryable property")
        found = self.queryables.get(node.name)
        if found is None:
            raise FilterError(
                f"unknown property {node.name[:60]!r}; queryables: {', '.join(self.queryables)}"
            )
        self.names.add(found.name)
        return found

    def literal(self, value: Any, queryable: Queryable) -> str:
        kind = queryable.kind
        if isinstance(value, (ast.Node, values.Geometry, values.Envelope, list, dict)):
            raise FilterError(f"{queryable.name} is compared with a literal value only")
        if kind in ("integer", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FilterError(f"{queryable.name} is a number: compare it with a number")
        elif kind == "date":
            if isinstance(value, datetime):
                value = value.date()
            if not isinstance(value, (date, str)):
                raise FilterError(f"{queryable.name} is a date: compare it with DATE('…')")
        elif kind == "date-time":
            if not isinstance(value, (datetime, date, str)):
                raise FilterError(
                    f"{queryable.name} is a date-time: compare it with TIMESTAMP('…')"
                )
        elif not isinstance(value, str):
            raise FilterError(f"{queryable.name} is text: compare it with a 'quoted' string")
        if isinstance(value, str) and kind in ("date", "date-time"):
            try:
                parse = date.fromisoformat if kind == "date" else datetime.fromisoformat
                value = parse(value)
            except ValueError:
                raise FilterError(
                    f"{queryable.name}: {value[:40]!r} is not an ISO 8601 value"
                ) from None
        return self.bind(value, kind)

    def geometry(self, node: Any) -> str:
        if isinstance(node, values.Geometry):
            shape = self.bind(json.dumps(node.geometry), "string")
            return f"ST_SetSRID(ST_GeomFromGeoJSON({shape}), 4326)"
        if isinstance(node, values.Envelope):
            box = (node.x1, node.y1, node.x2, node.y2)
        elif isinstance(node, ast.Function) and node.name.lower() == "bbox":
            if len(node.arguments) not in (4, 6) or not all(
                isinstance(v, (int, float)) for v in node.arguments
            ):
                raise FilterError("BBOX takes four numbers: minLon, minLat, maxLon, maxLat")
            args = node.arguments
            box = (
                (args[0], args[1], args[2], args[3])
                if len(args) == 4
                else (args[0], args[1], args[3], args[4])
            )
        else:
            raise FilterError("a spatial predicate compares a geometry with a WKT literal or BBOX")
        corners = ", ".join(self.bind(float(v), "number") for v in box)
        return f"ST_MakeEnvelope({corners}, 4326)"

    def write(self, node: Any) -> str:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"more than {MAX_TERMS} terms")
        if isinstance(node, ast.Not):
            return f"(NOT {self.write(node.sub_node)})"
        if isinstance(node, (ast.And, ast.Or)):
            op = " AND " if isinstance(node, ast.And) else " OR "
            return f"({self.write(node.lhs)}{op}{self.write(node.rhs)})"
        if type(node) in COMPARISONS:
            queryable = self.attribute(node.lhs)
            if queryable.kind == "geometry":
                raise FilterError("compare geometries with the spatial functions (S_INTERSECTS …)")
            op = COMPARISONS[type(node)]
            value = self.literal(node.rhs, queryable)
            if queryable.kind == "array":
                if op not in ("=", "<>"):
                    raise FilterError(f"{queryable.name} takes = and <> only")
                contains = f"coalesce({queryable.sql} @> ARRAY[{value}], false)"
                return contains if op == "=" else f"(NOT {contains})"
            return f"({queryable.sql} {op} {value})"
        if isinstance(node, ast.Between):
            queryable = self.scalar(node.lhs)
            low, high = self.literal(node.low, queryable), self.literal(node.high, queryable)
            return f"({queryable.sql} {'NOT ' if node.not_ else ''}BETWEEN {low} AND {high})"
        if isinstance(node, ast.Like):
            queryable = self.scalar(node.lhs)
            if queryable.kind != "string":
                raise FilterError(f"LIKE applies to text, and {queryable.name} is not text")
            # CQL2's wildcards are % and _, with \ as escape: PostgreSQL's own.
            pattern = self.literal(node.pattern, queryable)
            like = "ILIKE" if node.nocase else "LIKE"
            return f"({queryable.sql} {'NOT ' if node.not_ else ''}{like} {pattern})"
        if isinstance(node, ast.In):
            queryable = self.scalar(node.lhs)
            if not node.sub_nodes:
                raise FilterError("IN needs at least one value")
            items = ", ".join(self.literal(v, queryable) for v in node.sub_nodes)
            return f"({queryable.sql} {'NOT ' if node.not_ else ''}IN ({items}))"
        if isinstance(node, ast.IsNull):
            queryable = self.attribute(node.lhs)
            return f"({queryable.sql} IS {'NOT ' if node.not_ else ''}NULL)"
        if type(node) in SPATIAL:
            lhs, rhs = node.lhs, node.rhs
            if not isinstance(lhs, ast.Attribute):
                lhs, rhs = rhs, lhs
            queryable = self.attribute(lhs)
            if queryable.kind != "geometry":
                raise FilterError(f"{queryable.name} is not a geometry")
            return f"{SPATIAL[type(node)]}({queryable.sql}, {self.geometry(rhs)})"
        if isinstance(node, bool):
            return "true" if node else "false"
        raise FilterError(f"{type(node).__name__} is not supported in filters here")

    def scalar(self, node: Any) -> Queryable:
        queryable = self.attribute(node)
        if queryable.kind in ("geometry", "array"):
            raise FilterError(f"{queryable.name} takes = only")
        return queryable


def cql2_text_condition(
    text: str, *, queryables: dict[str, Queryable], prefix: str = "cql_"
) -> Condition:
    """The CQL2 text filter ``text`` as SQL on the collection's queryables; ``FilterError``
    saying why when it cannot be parsed or names what the collection does not have."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"longer than {MAX_FILTER_CHARS} characters")
    try:
        tree = parse_cql2_text(text)
    except (LarkError, ValueError, TypeError, AttributeError) as exc:
        raise FilterError(f"not CQL2 text: {str(exc).splitlines()[0][:200]}") from None
    writer = _Writer(queryables, prefix)
    sql = writer.write(tree)
    return Condition(sql=sql, params=writer.params, names=writer.names)


def equality_condition(
    pairs: list[tuple[str, str]], *, queryables: dict[str, Queryable], prefix: str = "prop_"
) -> Condition:
    """``name=value`` query parameters (OGC API – Features' property filters) as SQL: each
    value compared for equality with its queryable, all of them together."""
    writer = _Writer(queryables, prefix)
    clauses = []
    for name, text in pairs:
        queryable = queryables[name]
        value: Any = text
        if queryable.kind == "integer":
            try:
                value = int(text)
            except ValueError:
                raise FilterError(f"{name} must be an integer") from None
        elif queryable.kind == "number":
            try:
                value = float(text)
            except ValueError:
                raise FilterError(f"{name} must be a number") from None
        clauses.append(writer.write(ast.Equal(ast.Attribute(name), value)))
    return Condition(sql=" AND ".join(clauses) or "true", params=writer.params, names=writer.names)
