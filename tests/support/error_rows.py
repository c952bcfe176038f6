"""Which rows of the error table (chatgen.errors.CASES) this run saw answered as the table says.

Each test that produces a row's error checks it through `check_row` (or, in test_error_table.py, through its own
check and `observe`); at the end of a whole run (tests/conftest.py: pytest_sessionfinish) every row must have been
observed, so a row whose test went away, or stopped producing the error, fails the run.
"""

from __future__ import annotations

from typing import Any

from chatgen.errors import CASES, FAILURES

CASE_BY_ID = {case.id: case for case in CASES}
OBSERVED: set[str] = set()


def observe(case_id: str) -> None:
    assert case_id in CASE_BY_ID, case_id
    OBSERVED.add(case_id)


def check_row(case_id: str, error: dict[str, Any]) -> None:
    """An OpenAI error object is the row's: its `type` and `code`; then the row counts as observed."""
    failure = CASE_BY_ID[case_id].failure
    assert (error["type"], error["code"]) == (FAILURES[failure].openai_type, failure.value), error
    observe(case_id)


def unobserved() -> set[str]:
    return set(CASE_BY_ID) - OBSERVED
