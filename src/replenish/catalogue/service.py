"""Catalogue operations. Like every service, these never commit: the caller owns the transaction."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from replenish.audit import service as audit
from replenish.catalogue.models import Product, ProductVersion
from replenish.catalogue.schemas import ImportIssue, ProductFields, ProductRead, ProductRow
from replenish.constants import AuditAction
from replenish.errors import DomainError, InvalidRequest, NotFound

# The columns of a catalogue file; lists (device_kinds, slot_names) are separated by "|".
CSV_COLUMNS = ("sku", "name", "pack_size", "unit", "price", "currency", "device_kinds", "slot_names", "available")
LIST_SEPARATOR = "|"
MAX_IMPORT_ROWS = 100_000


class ImportRefused(DomainError):
    """A catalogue file with bad rows: nothing is imported, every bad row is named."""

    status_code = 422

    def __init__(self, issues: list[ImportIssue]) -> None:
        rows = len({issue.line for issue in issues})
        super().__init__(f"nothing imported: {rows} bad row{'s' if rows != 1 else ''}")
        self.issues = issues

    def body(self) -> dict[str, Any]:
        return {**super().body(), "issues": [issue.model_dump() for issue in self.issues]}


@dataclass
class ImportCounts:
    created: int = 0
    changed: int = 0
    unchanged: int = 0


def read(version: ProductVersion) -> ProductRead:
    return ProductRead(
        sku=version.sku,
        version=version.version,
        version_id=version.id,
        name=version.name,
        pack_size=version.pack_size,
        unit=version.unit,
        price=version.price,
        currency=version.currency,
        device_kinds=list(version.device_kinds),
        slot_names=list(version.slot_names),
        available=version.available,
        changed_at=version.created_at,
        changed_by=version.created_by,
    )


def get(*, session: Session, sku: str) -> tuple[Product, ProductVersion]:
    found = session.exec(
        select(Product, ProductVersion)
        .join(ProductVersion, col(ProductVersion.id) == col(Product.current_version_id))
        .where(col(Product.sku) == sku)
    ).first()
    if found is None:
        raise NotFound("product", sku)
    return found


def current(*, session: Session) -> Sequence[tuple[Product, ProductVersion]]:
    """Every product with its current version, by SKU."""
    return session.exec(
        select(Product, ProductVersion)
        .join(ProductVersion, col(ProductVersion.id) == col(Product.current_version_id))
        .order_by(col(Product.sku))
    ).all()


def current_versions(*, session: Session, skus: Sequence[str]) -> dict[str, ProductVersion]:
    """The current version of each of ``skus`` the catalogue lists."""
    if not skus:
        return {}
    rows = session.exec(
        select(ProductVersion)
        .join(Product, col(ProductVersion.id) == col(Product.current_version_id))
        .where(col(Product.sku).in_(sorted(set(skus))))
    ).all()
    return {version.sku: version for version in rows}


def list_products(
    *,
    session: Session,
    device_kind: str | None = None,
    slot_name: str | None = None,
    available: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[tuple[Product, ProductVersion]]:
    """Current versions by SKU. The eligibility filters are applied here rather than in SQL: the lists are JSON,
    and a catalogue is thousands of rows, not millions."""
    chosen = [
        (product, version)
        for product, version in current(session=session)
        if (device_kind is None or device_kind in version.device_kinds)
        and (slot_name is None or not version.slot_names or slot_name in version.slot_names)
        and (available is None or version.available == available)
    ]
    return chosen[offset : offset + limit]


@dataclass(frozen=True)
class SlotShape:
    """What decides which products fit a slot."""

    device_kind: str
    slot_name: str
    unit: str


def fits(version: ProductVersion, slot: SlotShape) -> str | None:
    """Why the product does not fit the slot, or None when it does."""
    if slot.device_kind not in version.device_kinds:
        return f"{version.sku} is for {', '.join(version.device_kinds)} devices, not a {slot.device_kind}"
    if version.slot_names and slot.slot_name not in version.slot_names:
        return f"{version.sku} fits the slots {', '.join(version.slot_names)}, not {slot.slot_name}"
    if version.unit != slot.unit:
        return f"{version.sku} is sold in {version.unit}; the {slot.slot_name} slot counts {slot.unit}"
    return None


def eligible(*, session: Session, slot: SlotShape) -> list[tuple[Product, ProductVersion]]:
    """The products that fit the slot, available or not, by SKU."""
    return fitting(current(session=session), slot)


def fitting(rows: Sequence[tuple[Product, ProductVersion]], slot: SlotShape) -> list[tuple[Product, ProductVersion]]:
    """Of products already read (a page of many slots reads the catalogue once), those that fit the slot."""
    return [(product, version) for product, version in rows if fits(version, slot) is None]


def check_choice(
    *, session: Session, sku: str, slot: SlotShape, field: str, listed_only: bool
) -> ProductVersion | None:
    """The catalogue's current version of a product chosen for the slot; InvalidRequest naming ``field`` when it
    does not fit. A SKU the catalogue does not list is refused when ``listed_only`` or when the catalogue has
    products for the slot; otherwise it is a free SKU, as before there was a catalogue (None)."""
    product = session.get(Product, sku)
    if product is None:
        if listed_only or eligible(session=session, slot=slot):
            raise InvalidRequest(f"{sku} is not in the catalogue for the {slot.slot_name} slot", field=field)
        return None
    version = session.get(ProductVersion, product.current_version_id)
    assert version is not None
    reason = fits(version, slot)
    if reason is not None:
        raise InvalidRequest(reason, field=field)
    return version


def versions(*, session: Session, sku: str) -> Sequence[ProductVersion]:
    get(session=session, sku=sku)
    return session.exec(
        select(ProductVersion).where(col(ProductVersion.sku) == sku).order_by(col(ProductVersion.version).desc())
    ).all()


def put(*, session: Session, sku: str, fields: ProductFields, actor: str, now: datetime) -> tuple[ProductVersion, bool]:
    """The product with these fields: a new SKU, a new version of it, or (the same fields) nothing new. Returns
    its current version and whether anything was written."""
    product = session.get(Product, sku, with_for_update=True)
    wanted = _comparable(fields.model_dump())
    if product is not None:
        current = session.get(ProductVersion, product.current_version_id)
        assert current is not None
        if current.fields() == wanted:
            return current, False
    version = ProductVersion(
        sku=sku,
        version=1 if product is None else product.version + 1,
        created_at=now,
        created_by=actor,
        **wanted,
    )
    session.add(version)
    session.flush()
    if product is None:
        product = Product(sku=sku, current_version_id=version.id, version=version.version, updated_at=now)
        session.add(product)
    else:
        product.current_version_id, product.version, product.updated_at = version.id, version.version, now
    session.flush()
    audit.record(
        session=session,
        at=now,
        actor=actor,
        action=AuditAction.PRODUCT_CHANGED,
        subject_type="product",
        subject_id=sku,
        detail={"version": version.version, "price": str(version.price), "currency": version.currency},
    )
    return version, True


def _comparable(wanted: dict[str, Any]) -> dict[str, Any]:
    """Fields as a version stores them: plain strings, lists sorted."""
    kinds, names = wanted["device_kinds"], wanted["slot_names"]
    return {
        **wanted,
        "currency": str(wanted["currency"]),
        "device_kinds": sorted(str(kind) for kind in kinds),
        "slot_names": sorted(names),
    }


def parse_csv(text: str) -> list[ProductRow]:
    """The rows of a catalogue file, or ImportRefused naming every bad row (its line, its column, why)."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [column.strip() for column in next(reader, [])]
        missing = [column for column in CSV_COLUMNS if column not in header]
        unknown = [column for column in header if column not in CSV_COLUMNS]
        repeated = sorted({column for column in header if header.count(column) > 1})
        if missing or unknown or repeated:
            parts = [
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}" if missing else "",
                f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}" if unknown else "",
                f"column{'s' if len(repeated) > 1 else ''} named twice: {', '.join(repeated)}" if repeated else "",
            ]
            reason = "; ".join(part for part in parts if part)
            raise ImportRefused(
                [ImportIssue(line=1, field=None, reason=f"{reason} (expected: {', '.join(CSV_COLUMNS)})")]
            )
        return _rows(reader, header)
    except csv.Error as exc:  # a field beyond the csv module's limit, an unclosed quote swallowing the rest
        raise ImportRefused([ImportIssue(line=reader.line_num, field=None, reason=f"not CSV here: {exc}")]) from None


def _rows(reader: Any, header: list[str]) -> list[ProductRow]:
    rows: list[ProductRow] = []
    issues: list[ImportIssue] = []
    first_line_of: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not any(value.strip() for value in record):
            continue  # a blank line
        if len(rows) + len(issues) >= MAX_IMPORT_ROWS:
            issues.append(ImportIssue(line=line, field=None, reason=f"more than {MAX_IMPORT_ROWS} rows"))
            break
        if len(record) != len(header):
            issues.append(ImportIssue(line=line, field=None, reason=f"{len(record)} values for {len(header)} columns"))
            continue
        values = {column: value.strip() for column, value in zip(header, record, strict=True)}
        data: dict[str, object] = {
            **values,
            "device_kinds": [kind.strip() for kind in values["device_kinds"].split(LIST_SEPARATOR) if kind.strip()],
            "slot_names": [name.strip() for name in values["slot_names"].split(LIST_SEPARATOR) if name.strip()],
            "available": values["available"] or "true",
        }
        try:
            row = ProductRow.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                column = str(error["loc"][0]) if error["loc"] else None
                issues.append(ImportIssue(line=line, field=column, reason=error["msg"]))
            continue
        key = row.sku.casefold()  # INK-1 and ink-1 in one file are a typo, not two products
        if key in first_line_of:
            issues.append(ImportIssue(line=line, field="sku", reason=f"{row.sku} is also on line {first_line_of[key]}"))
            continue
        first_line_of[key] = line
        rows.append(row)
    if issues:
        raise ImportRefused(issues)
    if not rows:
        raise ImportRefused([ImportIssue(line=1, field=None, reason="the file lists no product")])
    return rows


def import_rows(*, session: Session, rows: list[ProductRow], actor: str, now: datetime) -> ImportCounts:
    counts = ImportCounts()
    # By SKU: two imports that share products lock their rows in the same order, never each waiting on the other.
    for row in sorted(rows, key=lambda row: row.sku):
        fields = ProductFields.model_validate(row.model_dump(exclude={"sku"}))
        version, written = put(session=session, sku=row.sku, fields=fields, actor=actor, now=now)
        if not written:
            counts.unchanged += 1
        elif version.version == 1:
            counts.created += 1
        else:
            counts.changed += 1
    return counts
