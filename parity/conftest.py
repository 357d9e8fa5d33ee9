"""Shared set-up for the parity suite: hypothesis profiles, the torch device and the dtypes.

Environment:
  HYPOTHESIS_PROFILE    ci (default: fast, derandomized — the same examples on every run),
                        dev (~100 examples a test, random, remembers failures in .hypothesis/),
                        soak (~1000+ examples a test, for a long run before a release).
  NPGEMMA_TEST_DEVICE   cpu (default) or cuda (or cuda:N): where the torch side runs.
  NPGEMMA_TEST_DTYPES   comma-separated torch compute dtypes, default "float32";
                        e.g. "float32,bfloat16,float16". The NumPy reference is always float32.

Every test taking a `dtype` argument is parametrized over NPGEMMA_TEST_DTYPES; `device` is a
session fixture (session scope: hypothesis re-runs a test body many times per fixture value).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

# max_examples is per test (and per dtype). The whole default run (ci, float32, CPU) takes
# seconds: the shapes are tiny, and parity of the math does not depend on size.
settings.register_profile(
    "ci", max_examples=25, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "dev", max_examples=100, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "soak", max_examples=1200, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])  # no explain
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = ("float32", "bfloat16", "float16")


def _test_dtypes() -> list[str]:
    raw = os.environ.get("NPGEMMA_TEST_DTYPES", "float32")
    names = [d.strip() for d in raw.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES]
    if bad or not names:
        raise pytest.UsageError(f"NPGEMMA_TEST_DTYPES={raw!r}: use a comma-separated subset of "
                                f"{', '.join(DTYPES)}")
    return names


def pytest_report_header(config):
    return (f"npgemma parity: hypothesis profile {settings.get_current_profile_name()!r} "
            f"({settings.default.max_examples} examples a test), "
            f"device {os.environ.get('NPGEMMA_TEST_DEVICE', 'cpu')!r}, dtypes {_test_dtypes()}")


def _parametrizes(metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    # A test that parametrizes `dtype` itself keeps its own values.
    if "dtype" in metafunc.fixturenames and not _parametrizes(metafunc, "dtype"):
        metafunc.parametrize("dtype", _test_dtypes())


@pytest.fixture(scope="session")
def device():
    """The torch device the twin runs on. Asking for CUDA without one is an error, not a skip:
    a silently skipped GPU run would look like a passing one."""
    torch = pytest.importorskip("torch")
    name = os.environ.get("NPGEMMA_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"NPGEMMA_TEST_DEVICE={name!r} but torch {torch.__version__} sees no CUDA GPU")
    return torch.device(name)
