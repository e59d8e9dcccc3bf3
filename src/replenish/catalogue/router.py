from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from replenish.api.deps import ClockDep, CurrentOperator, CurrentPrincipal, EngineDep, Limit, Offset, ReadSession
from replenish.catalogue import service
from replenish.catalogue.schemas import SKU_PATTERN, ImportDone, ImportRejected, ProductRead, ProductWrite
from replenish.clock import Clock
from replenish.constants import DeviceKind
from replenish.db import transaction
from replenish.errors import ErrorBody, InvalidRequest, PayloadTooLarge

router = APIRouter(prefix="/catalogue", tags=["catalogue"])
MAX_IMPORT_BYTES = 20_000_000

CSV_EXAMPLE = (
    "sku,name,pack_size,unit,price,currency,device_kinds,slot_names,available\n"
    "INK-BLACK-XL,Black ink XL,1,fraction,24.90,EUR,printer,black,true\n"
    "MILK-1L,Milk 1 l,1,litre,1.19,EUR,fridge,milk,true\n"
)


@router.get(
    "/products",
    response_model=list[ProductRead],
    summary="The products, their current versions",
    description="Filter by what a slot could take: `device_kind` and `slot_name` (a product listing no slot names "
    "fits any slot of its kinds), and `available`. Any signed-in caller may read the catalogue.",
)
def list_products(
    session: ReadSession,
    principal: CurrentPrincipal,
    limit: Limit = 100,
    offset: Offset = 0,
    device_kind: Annotated[DeviceKind | None, Query()] = None,
    slot_name: Annotated[str | None, Query(max_length=64)] = None,
    available: Annotated[bool | None, Query()] = None,
) -> list[ProductRead]:
    rows = service.list_products(
        session=session,
        device_kind=device_kind,
        slot_name=slot_name,
        available=available,
        limit=limit,
        offset=offset,
    )
    return [service.read(version) for _, version in rows]


@router.get("/products/{sku}", response_model=ProductRead, summary="A product, its current version")
def get_product(sku: str, session: ReadSession, principal: CurrentPrincipal) -> ProductRead:
    _, version = service.get(session=session, sku=sku)
    return service.read(version)


@router.get(
    "/products/{sku}/versions",
    response_model=list[ProductRead],
    summary="Every version of a product, newest first",
)
def product_versions(sku: str, session: ReadSession, principal: CurrentPrincipal) -> list[ProductRead]:
    return [service.read(version) for version in service.versions(session=session, sku=sku)]


@router.put(
    "/products/{sku}",
    response_model=ProductRead,
    summary="Add a product, or change one (operators)",
    description="A new SKU answers 201; a change makes a new version (200); the same fields again change nothing "
    "(200, same version). Orders keep the version they were priced at.",
    responses={201: {"model": ProductRead, "description": "A new product."}},
)
def put_product(
    sku: Annotated[str, Path(min_length=1, max_length=128, pattern=SKU_PATTERN)],
    body: ProductWrite,
    response: Response,
    engine: EngineDep,
    clock: ClockDep,
    operator: CurrentOperator,
) -> ProductRead:
    with transaction(engine, immediate=True) as session:
        version, written = service.put(session=session, sku=sku, fields=body, actor=operator.actor, now=clock.now())
        if written and version.version == 1:
            response.status_code = status.HTTP_201_CREATED
        return service.read(version)


@router.post(
    "/imports",
    response_model=ImportDone,
    summary="Import a catalogue file (operators)",
    description="A CSV file with the columns "
    + ", ".join(f"`{column}`" for column in service.CSV_COLUMNS)
    + f" (lists separated by `{service.LIST_SEPARATOR}`). All or nothing: a file with a bad row imports nothing "
    "and the 422 lists every bad row with its line and column. `replenish catalogue import FILE` does the same.",
    responses={
        413: {"model": ErrorBody, "description": "The file is larger than 20 MB."},
        422: {"model": ImportRejected, "description": "Nothing imported; every bad row is listed."},
    },
    openapi_extra={"requestBody": {"content": {"text/csv": {"schema": {"type": "string"}, "example": CSV_EXAMPLE}}}},
)
async def import_catalogue(
    request: Request, engine: EngineDep, clock: ClockDep, operator: CurrentOperator
) -> ImportDone:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise PayloadTooLarge(f"a catalogue file of at most {MAX_IMPORT_BYTES // 1_000_000} MB")
    raw = bytearray()
    async for chunk in request.stream():  # without a Content-Length, stop reading at the limit
        raw += chunk
        if len(raw) > MAX_IMPORT_BYTES:
            raise PayloadTooLarge(f"a catalogue file of at most {MAX_IMPORT_BYTES // 1_000_000} MB")
    try:
        text = bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the file is not UTF-8 text (byte {exc.start})") from exc
    return await run_in_threadpool(_import, text, engine=engine, clock=clock, actor=operator.actor)


def _import(text: str, *, engine: Engine, clock: Clock, actor: str) -> ImportDone:
    rows = service.parse_csv(text)
    with transaction(engine, immediate=True) as session:
        counts = service.import_rows(session=session, rows=rows, actor=actor, now=clock.now())
    return ImportDone(created=counts.created, changed=counts.changed, unchanged=counts.unchanged)
