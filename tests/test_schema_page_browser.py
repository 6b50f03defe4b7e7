"""The human page of the OpenAPI description, /schema/docs, renders in a real browser with no internet."""

import pytest

from tests.support.browser import LOOPBACK_ONLY, dump_dom
from tests.support.openapi_check import served_schema
from tests.support.service import ServiceProcess

pytestmark = pytest.mark.slow


def test_swagger_ui_shows_every_operation_with_only_loopback_reachable(tmp_path):
    # The page and the description need no database: PGHOST unset names make run's embedded one, not running here.
    service = ServiceProcess({"DATA_DIR": str(tmp_path / "data")}, tmp_path / "service.log").start()
    try:
        # Virtual time lets the page's scripts fetch /schema and render before the DOM is taken.
        dom = dump_dom(f"{service.url}/schema/docs", tmp_path / "profile", LOOPBACK_ONLY, "--virtual-time-budget=10000")
    finally:
        service.stop()

    schema = served_schema()
    for path, operations in schema["paths"].items():
        assert f'data-path="{path}"' in dom, path
        for operation in operations.values():
            assert operation["summary"] in dom, operation["summary"]
    assert "swagger-ui" in dom and schema["info"]["title"] in dom
