"""qdrant-client's models to qdrant-edge-py's types and back: the one place that says what the
embedded engine cannot do.

Edge's types mirror the server's but are not qdrant-client's. Filters arrive as the server's
JSON (the /search body's `filter`), so every condition the server documents is translated
here; the few Edge lacks raise `Unsupported`, which /search answers 400 `invalid_filter`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

from service.search.backend import Unsupported

ConditionIn = Any  # one of qdrant-client's condition models (they share no base class)


def point_id(pid: Any) -> models.ExtendedPointId:
    """Edge answers UUIDs as uuid.UUID; the server (and every caller here) uses strings."""
    return str(pid) if isinstance(pid, uuid.UUID) else pid


def point_id_in(pid: models.ExtendedPointId) -> int | str:
    if isinstance(pid, int):
        return pid
    try:
        return str(uuid.UUID(str(pid)))
    except ValueError:
        raise Unsupported(
            f"point id {pid!r} is neither an unsigned integer nor a UUID (Qdrant's two id forms)"
        ) from None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def filter_in(flt: models.Filter | None) -> edge.Filter | None:
    if flt is None:
        return None
    min_should = None
    if flt.min_should is not None:
        min_should = edge.MinShould(
            [condition_in(c) for c in flt.min_should.conditions], flt.min_should.min_count
        )
    return edge.Filter(
        must=[condition_in(c) for c in _as_list(flt.must)] or None,
        should=[condition_in(c) for c in _as_list(flt.should)] or None,
        must_not=[condition_in(c) for c in _as_list(flt.must_not)] or None,
        min_should=min_should,
    )


def condition_in(c: ConditionIn) -> Any:
    if isinstance(c, models.Filter):
        return filter_in(c)
    if isinstance(c, models.FieldCondition):
        return _field_in(c)
    if isinstance(c, models.IsEmptyCondition):
        return edge.IsEmptyCondition(c.is_empty.key)
    if isinstance(c, models.IsNullCondition):
        return edge.IsNullCondition(c.is_null.key)
    if isinstance(c, models.HasIdCondition):
        return edge.HasIdCondition({point_id_in(i) for i in c.has_id})
    if isinstance(c, models.HasVectorCondition):
        return edge.HasVectorCondition(c.has_vector)
    if isinstance(c, models.NestedCondition):
        inner = filter_in(c.nested.filter)
        assert inner is not None
        return edge.NestedCondition(c.nested.key, inner)
    raise Unsupported(f"the embedded engine has no {type(c).__name__} filter condition")


def _field_in(c: models.FieldCondition) -> edge.FieldCondition:
    return edge.FieldCondition(
        c.key,
        match=_match_in(c.match) if c.match is not None else None,
        range=_range_in(c.range) if c.range is not None else None,
        geo_bounding_box=(
            edge.GeoBoundingBox(
                _geo(c.geo_bounding_box.top_left), _geo(c.geo_bounding_box.bottom_right)
            )
            if c.geo_bounding_box is not None
            else None
        ),
        geo_radius=(
            edge.GeoRadius(_geo(c.geo_radius.center), c.geo_radius.radius)
            if c.geo_radius is not None
            else None
        ),
        geo_polygon=(
            edge.GeoPolygon(
                [_geo(p) for p in c.geo_polygon.exterior.points],
                [[_geo(p) for p in ring.points] for ring in c.geo_polygon.interiors or []] or None,
            )
            if c.geo_polygon is not None
            else None
        ),
        values_count=(
            edge.ValuesCount(
                lt=c.values_count.lt,
                gt=c.values_count.gt,
                lte=c.values_count.lte,
                gte=c.values_count.gte,
            )
            if c.values_count is not None
            else None
        ),
        is_empty=c.is_empty,
        is_null=c.is_null,
    )


def _geo(p: models.GeoPoint) -> edge.GeoPoint:
    return edge.GeoPoint(lon=p.lon, lat=p.lat)


def _match_in(m: Any) -> Any:
    if isinstance(m, models.MatchValue):
        return edge.MatchValue(m.value)
    if isinstance(m, models.MatchAny):
        return edge.MatchAny(list(m.any))
    if isinstance(m, models.MatchExcept):
        return edge.MatchExcept(list(m.except_))
    if isinstance(m, models.MatchText):
        return edge.MatchText(m.text)
    # newer server match kinds, by name: qdrant-client versions differ in which they define
    for name, field, make in (
        ("MatchTextAny", "text_any", edge.MatchTextAny),
        ("MatchPhrase", "phrase", edge.MatchPhrase),
    ):
        if type(m).__name__ == name:
            return make(getattr(m, field))
    raise Unsupported(f"the embedded engine has no {type(m).__name__} match")


def _range_in(r: Any) -> Any:
    if isinstance(r, models.Range):
        return edge.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
    if isinstance(r, models.DatetimeRange):

        def iso(v: Any) -> str | None:
            if v is None:
                return None
            return v.isoformat() if isinstance(v, dt.date | dt.datetime) else str(v)

        return edge.RangeDateTime(gte=iso(r.gte), gt=iso(r.gt), lte=iso(r.lte), lt=iso(r.lt))
    raise Unsupported(f"the embedded engine has no {type(r).__name__} range")


def vector_in(v: Any) -> Any:
    if isinstance(v, list):
        return [float(x) for x in v]
    if isinstance(v, dict):
        out: dict[str, Any] = {}
        for name, part in v.items():
            if isinstance(part, models.SparseVector):
                out[name] = edge.SparseVector(list(part.indices), list(part.values))
            elif isinstance(part, list):
                out[name] = part
            else:
                raise Unsupported(
                    f"vector {name!r}: the embedded engine takes numbers, not {type(part).__name__}"
                )
        return out
    raise Unsupported(f"the embedded engine takes vectors as numbers, not {type(v).__name__}")


def point_in(p: models.PointStruct) -> edge.Point:
    return edge.Point(point_id_in(p.id), vector_in(p.vector), dict(p.payload or {}))


def vector_out(v: Any) -> Any:
    if isinstance(v, dict):
        return {
            n: models.SparseVector(indices=list(x.indices), values=list(x.values))
            if isinstance(x, edge.SparseVector)
            else x
            for n, x in v.items()
        }
    return v


def scored_out(p: edge.ScoredPoint) -> models.ScoredPoint:
    return models.ScoredPoint(
        id=point_id(p.id),
        version=p.version,
        score=p.score,
        payload=p.payload,
        vector=vector_out(p.vector),
    )


def record_out(r: edge.Record) -> models.Record:
    return models.Record(id=point_id(r.id), payload=r.payload, vector=vector_out(r.vector))
