import pytest

import rillet as rl


@pytest.fixture(autouse=True)
def _fresh_session():
    # Each test starts from default settings (a test may shrink the memory budget).
    rl.set_config(progress=False)
    yield
