"""The catalogue (issue 20, part 1): products operators load through the API or a CSV file, versioned so an order
keeps the price it was decided at; customers read it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from replenish.catalogue.models import Product, ProductVersion
from replenish.cli import app as cli
from replenish.clock import ManualClock
from replenish.runtime import Platform
from support.api import create_customer, customer_api, register_device

INK: dict[str, Any] = {
    "name": "Black ink XL",
    "pack_size": 1,
    "unit": "fraction",
    "price": "24.90",
    "currency": "EUR",
    "device_kinds": ["printer"],
    "slot_names": ["black"],
}
HEADER = "sku,name,pack_size,unit,price,currency,device_kinds,slot_names,available\n"


@pytest.mark.both_stacks  # prices as NUMERIC, the lists as JSONB, the row lock
def test_an_operator_adds_a_product_and_each_change_is_a_new_version(api: httpx.Client, clock: ManualClock) -> None:
    added = api.put("/catalogue/products/INK-BLACK-XL", json=INK)
    assert added.status_code == 201, added.text
    assert (added.json()["version"], added.json()["price"], added.json()["available"]) == (1, "24.90", True)
    again = api.put("/catalogue/products/INK-BLACK-XL", json={**INK, "price": "24.9"})  # the same price
    assert again.status_code == 200 and again.json()["version"] == 1, "the same fields are no new version"
    clock.advance(timedelta(days=1))
    dearer = api.put("/catalogue/products/INK-BLACK-XL", json={**INK, "price": "26.50"})
    assert dearer.status_code == 200 and dearer.json()["version"] == 2
    assert dearer.json()["version_id"] != added.json()["version_id"]

    current = api.get("/catalogue/products/INK-BLACK-XL").json()
    assert (current["version"], current["price"]) == (2, "26.50")
    history = api.get("/catalogue/products/INK-BLACK-XL/versions").json()
    assert [(v["version"], v["price"]) for v in history] == [(2, "26.50"), (1, "24.90")]
    assert datetime.fromisoformat(history[0]["changed_at"]) - datetime.fromisoformat(history[1]["changed_at"]) == (
        timedelta(days=1)
    ), "each version says when it was made"
    changes = api.get("/audit", params={"action": "catalogue.product_changed"}).json()
    assert sorted(event["detail"]["version"] for event in changes) == [1, 2]
    assert api.get("/catalogue/products/NO-SUCH").status_code == 404


def test_customers_read_the_catalogue_and_cannot_change_it(platform: Platform, api: httpx.Client) -> None:
    api.put("/catalogue/products/INK-BLACK-XL", json=INK).raise_for_status()
    create_customer(api)
    with customer_api(platform, "ada@example.com") as ada:
        assert [p["sku"] for p in ada.get("/catalogue/products").json()] == ["INK-BLACK-XL"]
        refused = ada.put("/catalogue/products/INK-BLACK-XL", json={**INK, "price": "0.01"})
        assert refused.status_code == 403
        assert ada.post("/catalogue/imports", content=HEADER, headers={"Content-Type": "text/csv"}).status_code == 403
    assert api.get("/catalogue/products/INK-BLACK-XL").json()["price"] == "24.90"
    assert httpx.get(f"{platform.api_url}/api/v1/catalogue/products").status_code == 401


def test_the_catalogue_lists_what_a_slot_could_take(api: httpx.Client) -> None:
    products = {
        "INK-BLACK-XL": INK,
        "INK-ANY": {**INK, "name": "Any ink", "slot_names": []},
        "MILK-1L": {**INK, "name": "Milk", "unit": "litre", "device_kinds": ["fridge"], "slot_names": ["milk"]},
        "INK-OLD": {**INK, "name": "Old black", "available": False},
    }
    for sku, fields in products.items():
        api.put(f"/catalogue/products/{sku}", json=fields).raise_for_status()

    def skus(**params: Any) -> list[str]:
        answer = api.get("/catalogue/products", params=params)
        assert answer.status_code == 200, answer.text
        return [product["sku"] for product in answer.json()]

    assert skus() == ["INK-ANY", "INK-BLACK-XL", "INK-OLD", "MILK-1L"]
    assert skus(device_kind="printer", slot_name="black", available=True) == ["INK-ANY", "INK-BLACK-XL"]
    assert skus(device_kind="printer", slot_name="cyan") == ["INK-ANY"]
    assert skus(device_kind="fridge") == ["MILK-1L"]
    assert skus(available=False) == ["INK-OLD"]
    assert skus(limit=2, offset=1) == ["INK-BLACK-XL", "INK-OLD"]
    assert api.get("/catalogue/products", params={"device_kind": "toaster"}).status_code == 422


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price": "0"}, "price"),
        ({"price": "-3.00"}, "price"),
        ({"price": "1.999"}, "price"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "XYZ"}, "currency"),
        ({"pack_size": 0}, "pack_size"),
        ({"device_kinds": []}, "device_kinds"),
        ({"device_kinds": ["toaster"]}, "device_kinds"),
        ({"slot_names": ["black ink"]}, "slot_names"),
        ({"colour": "black"}, "colour"),
    ],
)
def test_a_bad_product_is_a_422_naming_the_field(api: httpx.Client, change: dict[str, Any], field: str) -> None:
    answer = api.put("/catalogue/products/INK-BLACK-XL", json={**INK, **change})
    assert answer.status_code == 422
    assert field in answer.json()["detail"][0]["loc"], answer.json()
    assert api.get("/catalogue/products/INK-BLACK-XL").status_code == 404, "nothing stored"


def test_a_file_over_the_limit_is_a_413_before_it_is_read(api: httpx.Client) -> None:
    huge = HEADER + GOOD_ROWS * 200_000  # about 25 MB
    answer = post_csv(api, huge)
    assert answer.status_code == 413 and "20 MB" in answer.json()["detail"]
    assert api.get("/catalogue/products").json() == []


def test_a_bad_sku_in_the_path_is_a_422(api: httpx.Client) -> None:
    answer = api.put("/catalogue/products/-dash-first", json=INK)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["path", "sku"]


def post_csv(api: httpx.Client, text: str | bytes) -> httpx.Response:
    return api.post("/catalogue/imports", content=text, headers={"Content-Type": "text/csv"})


GOOD_ROWS = (
    "INK-BLACK-XL,Black ink XL,1,fraction,24.90,EUR,printer,black,true\n"
    "INK-CMY,Colour inks,1,fraction,39.00,EUR,printer,cyan|magenta|yellow,\n"
    "EGGS-12,Eggs (12),12,eggs,3.49,EUR,fridge,eggs,true\n"
)


@pytest.mark.both_stacks
def test_a_catalogue_file_with_bad_rows_imports_nothing_and_names_every_one(api: httpx.Client) -> None:
    text = (
        HEADER
        + GOOD_ROWS
        + "MILK-1L,Milk,1,litre,0,EUR,fridge,milk,true\n"  # line 5: a price of zero
        + "BAD SKU,Thing,1,fraction,1.00,ZZZ,printer,,true\n"  # line 6: a bad SKU and an unknown currency
        + "INK-BLACK-XL,Again,1,fraction,20.00,EUR,printer,black,true\n"  # line 7: listed twice
        + "MILK-2L,Milk,1,litre,1.00,EUR,fridge,milk,true,extra\n"  # line 8: a value too many
        + "MILK-3L,Milk,1,litre,1.00,EUR,fridge\n"  # line 9: values missing
        + "ink-black-xl,Lower case,1,fraction,20.00,EUR,printer,black,true\n"  # line 10: line 2's SKU again
    )
    refused = post_csv(api, text)
    assert refused.status_code == 422
    body = refused.json()
    assert body["detail"] == "nothing imported: 6 bad rows"
    issues = {(issue["line"], issue["field"]) for issue in body["issues"]}
    assert issues == {(5, "price"), (6, "sku"), (6, "currency"), (7, "sku"), (8, None), (9, None), (10, "sku")}
    assert api.get("/catalogue/products").json() == [], "nothing imported"

    done = post_csv(api, HEADER + "\n" + GOOD_ROWS.replace("printer,cyan", "printer , cyan"))  # a blank line, spaces
    assert done.status_code == 200 and done.json() == {"created": 3, "changed": 0, "unchanged": 0}
    cmy = api.get("/catalogue/products/INK-CMY").json()
    assert (cmy["slot_names"], cmy["available"]) == (["cyan", "magenta", "yellow"], True)
    dearer = GOOD_ROWS.replace("3.49", "3.79")
    assert post_csv(api, HEADER + dearer).json() == {"created": 0, "changed": 1, "unchanged": 2}
    assert api.get("/catalogue/products/EGGS-12").json()["version"] == 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sku,name\nX,Y\n", "missing columns pack_size, unit, price, currency, device_kinds, slot_names, available"),
        (HEADER.replace("\n", ",colour\n"), "unknown column colour"),
        (HEADER, "the file lists no product"),
        (HEADER.replace("available", "price"), "column named twice: price"),
        (HEADER + 'X,"' + "y" * 200_000 + "\n", "not CSV here"),
        (b"\xff\xfe" + HEADER.encode("utf-16-le"), "not UTF-8"),
    ],
)
def test_a_file_that_is_no_catalogue_is_refused_plainly(api: httpx.Client, text: str | bytes, reason: str) -> None:
    refused = post_csv(api, text)
    assert refused.status_code == 422
    assert reason in str(refused.json()), refused.json()


def test_the_command_imports_a_file_or_lists_every_bad_row(tmp_path: Path, engine: Any) -> None:
    environment = {"REPLENISH_DATABASE_URL": str(engine.url), "REPLENISH_DATA_DIR": str(tmp_path)}
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + GOOD_ROWS + "MILK-1L,Milk,1,litre,-1,EUR,fridge,milk,true\n")
    refused = CliRunner().invoke(cli, ["catalogue", "import", str(bad)], env=environment)
    assert refused.exit_code == 1
    assert "nothing imported: 1 bad row" in refused.output and f"{bad}:5: price:" in refused.output
    with Session(engine) as session:
        assert session.exec(select(Product)).all() == []

    good = tmp_path / "good.csv"
    good.write_text(HEADER + GOOD_ROWS)
    done = CliRunner().invoke(cli, ["catalogue", "import", str(good)], env=environment)
    assert done.exit_code == 0, done.output
    assert "3 new, 0 changed, 0 unchanged" in done.output
    with Session(engine) as session:
        versions = session.exec(select(ProductVersion).where(ProductVersion.sku == "EGGS-12")).all()
        assert [(v.version, str(v.price), v.unit, v.pack_size, v.created_by) for v in versions] == [
            (1, "3.49", "eggs", 12.0, "cli")
        ]


def load(api: httpx.Client, products: dict[str, dict[str, Any]]) -> None:
    for sku, fields in products.items():
        api.put(f"/catalogue/products/{sku}", json={**INK, **fields}).raise_for_status()


def test_a_customer_chooses_a_slot_s_product_and_substitutes_from_those_that_fit(
    platform: Platform, api: httpx.Client
) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")  # black orders INK-BLACK, not listed
    load(
        api,
        {
            "INK-BLACK-XL": {},
            "INK-BLACK-STD": {"name": "Black ink", "price": "17.00"},
            "INK-ANY": {"name": "Any ink", "slot_names": [], "available": False},
            "INK-CYAN": {"name": "Cyan ink", "slot_names": ["cyan"]},
            "INK-LITRE": {"name": "Bulk ink", "unit": "litre"},
            "MILK-1L": {"name": "Milk", "device_kinds": ["fridge"], "slot_names": ["milk"]},
        },
    )
    with customer_api(platform, "ada@example.com") as ada:
        products = ada.get("/devices/printer-1/slots/black/products").json()
        assert (products["product_sku"], products["chosen"], products["substitutes"]) == ("INK-BLACK", None, [])
        assert [p["sku"] for p in products["eligible"]] == ["INK-ANY", "INK-BLACK-STD", "INK-BLACK-XL"]

        for sku, reason in (
            ("INK-CYAN", "INK-CYAN fits the slots cyan, not black"),
            ("MILK-1L", "MILK-1L is for fridge devices, not a printer"),
            ("INK-LITRE", "INK-LITRE is sold in litre; the black slot counts fraction"),
            ("INK-NOWHERE", "INK-NOWHERE is not in the catalogue for the black slot"),
        ):
            refused = ada.patch("/devices/printer-1/slots/black", json={"product_sku": sku})
            assert refused.status_code == 422 and refused.json() == {"detail": reason, "field": "product_sku"}
        chosen = ada.patch(
            "/devices/printer-1/slots/black", json={"product_sku": "INK-BLACK-XL", "substitute_skus": ["INK-BLACK-STD"]}
        )
        assert chosen.status_code == 200, chosen.text
        slot = chosen.json()["slots"][0]
        assert (slot["product_sku"], slot["substitute_skus"]) == ("INK-BLACK-XL", ["INK-BLACK-STD"])
        for substitutes in (["INK-BLACK-XL"], ["INK-BLACK-STD", "INK-BLACK-STD"], ["INK-CYAN"], ["INK-BLACK"]):
            refused = ada.patch("/devices/printer-1/slots/black", json={"substitute_skus": substitutes})
            assert refused.status_code == 422 and refused.json()["field"] == "substitute_skus", substitutes
        products = ada.get("/devices/printer-1/slots/black/products").json()
        assert products["chosen"]["name"] == "Black ink XL"
        assert [p["sku"] for p in products["substitutes"]] == ["INK-BLACK-STD"]
        assert ada.get("/devices/printer-1/slots/toner/products").status_code == 404
    bob = create_customer(api, email="bob@example.com")
    assert bob
    with customer_api(platform, "bob@example.com") as bobs:
        assert bobs.get("/devices/printer-1/slots/black/products").status_code == 404, "another customer's"


def test_a_free_sku_stays_possible_while_the_catalogue_lists_nothing_for_the_slot(api: httpx.Client) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    load(api, {"MILK-1L": {"name": "Milk", "device_kinds": ["fridge"], "slot_names": ["milk"]}})
    assert api.patch("/devices/printer-1/slots/black", json={"product_sku": "ANY-SKU"}).status_code == 200
    load(api, {"INK-BLACK-XL": {}})  # now the catalogue has a product for the slot
    assert api.patch("/devices/printer-1/slots/black", json={"product_sku": "ANY-SKU"}).status_code == 200, (
        "the slot's own SKU sent back unchanged"
    )
    assert api.patch("/devices/printer-1/slots/black", json={"product_sku": "OTHER-SKU"}).status_code == 422
    refused = api.patch("/devices/printer-1/slots/black", json={"substitute_skus": ["OTHER-SKU"]})
    assert refused.status_code == 422 and refused.json()["field"] == "substitute_skus"


def test_a_slot_orders_up_to_a_number_of_days_or_a_fixed_quantity_and_has_a_price_cap(api: httpx.Client) -> None:
    customer_id = create_customer(api)
    register_device(api, customer_id=customer_id, device_id="printer-1")
    slot = "/devices/printer-1/slots/black"
    assert api.patch(slot, json={"order_up_to_days": 30}).json()["slots"][0]["order_up_to_days"] == 30
    for bad in (0, -1, 400, "soon"):
        refused = api.patch(slot, json={"order_up_to_days": bad})
        assert refused.status_code == 422 and "order_up_to_days" in refused.text, bad
    back = api.patch(slot, json={"order_up_to_days": None}).json()["slots"][0]
    assert (back["order_up_to_days"], back["order_quantity"]) == (None, 1), "null goes back to the fixed quantity"
    assert api.patch(slot, json={"order_quantity": None}).status_code == 422, "only order_up_to_days may be null"

    consent = f"/customers/{customer_id}/consent"
    capped = api.put(consent, json={"slot_price_caps": {"printer-1/black": "30.00"}})
    assert capped.status_code in (200, 201), capped.text
    assert api.get(consent).json()["document"]["slot_price_caps"] == {"printer-1/black": "30.00"}
    for caps, field in (({"printer-1/cyan-x": "5"}, "slot_price_caps"), ({"printer-1/black": "-1"}, "slot_price_caps")):
        refused = api.put(consent, json={"slot_price_caps": caps})
        assert refused.status_code == 422 and field in refused.text, caps
