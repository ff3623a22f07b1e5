"""Which path of the ranking losses a test runs (:mod:`rsloss_d2.losses.compiled`): the PyTorch
("eager") path, unless the test module lists others in ``LOSS_PATHS`` — then each of its tests
runs once per path, against the same references and tolerances."""
import pytest

from rsloss_d2.losses import compiled


def pytest_generate_tests(metafunc):
    if "loss_path" in metafunc.fixturenames:
        metafunc.parametrize("loss_path", getattr(metafunc.module, "LOSS_PATHS", ("eager",)),
                             indirect=True)


@pytest.fixture(autouse=True)
def loss_path(request):
    name = getattr(request, "param", "eager")
    compiled.set_implementation(name)
    yield name
    compiled.set_implementation("auto")
