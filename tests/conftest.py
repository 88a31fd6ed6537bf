from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Playwright's sync API keeps an event loop running in the main thread while it is open;
    # run the browser tests last so no async test ever runs beside it.
    items.sort(
        key=lambda item: (
            item.get_closest_marker("browser") is not None or "browser" in item.path.parts
        )
    )
