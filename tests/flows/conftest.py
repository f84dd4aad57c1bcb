import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_backend():
    """One temporary Prefect server (with its own database) for all flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
