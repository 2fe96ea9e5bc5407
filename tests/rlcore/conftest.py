import pytest

from tests.rlcore.helpers import tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("models"))
