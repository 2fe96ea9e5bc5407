import pytest

from tests.rlcore.helpers import tiny_model
from tests.rlcore.reward_servers import misbehaving_server


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server():
    """A real reward server that misbehaves on demand (tests/rlcore/reward_servers.py)."""
    with misbehaving_server() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_server_state(request):
    if "server" in request.fixturenames:
        request.getfixturevalue("server").state.reset()
