"""The test suite: ``helpers.py`` holds the plain helpers the test modules share, ``conftest.py`` the fixtures."""

import pytest

# The shared helpers assert (assert_json_error, assert_matches...): have pytest rewrite their asserts, as it does in
# test modules and conftest.py, for the same detailed failure messages. This must run before they are imported.
pytest.register_assert_rewrite("tests.helpers")
