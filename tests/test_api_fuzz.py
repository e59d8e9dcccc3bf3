"""The OpenAPI description is a promise: schemathesis generates requests from it (its examples, then fuzzed ones) and
sends them to the real app with a customer's token; no answer may be a 5xx or differ from what the description
declares for its status (issue 17, 6). Bounded: a few hundred requests, a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.api import create_customer, personal_token, register_device

SCHEMATHESIS = str(Path(sys.executable).parent / "st")
EXAMPLES_PER_OPERATION = 6


@pytest.mark.slow
def test_no_request_the_api_describes_gets_a_server_error_or_an_undeclared_answer(platform, api, tmp_path):
    customer = create_customer(api, email="ada@example.com")
    register_device(api, customer_id=customer, device_id="ada-printer")
    token = personal_token(platform, "ada@example.com")
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{platform.api_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "17",
            # Signing out revokes the token every later request carries.
            "--exclude-path",
            "/api/v1/auth/sign-out",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its cache of failures found, replayed by later runs: each run starts from none
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert " generated, " in run.stdout and "passed" in run.stdout, run.stdout[-2000:]
