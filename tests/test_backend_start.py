"""backend_start: XLA's YNNPACK fusions off on JAX, without overriding the user or breaking older jaxlibs."""

import importlib.util

import pytest

from snapshot_ensembles import backend_start


@pytest.fixture
def jaxlib(monkeypatch):
    def installed(version):
        monkeypatch.setattr(backend_start, "jaxlib_version", lambda: version)

    return installed


def test_the_fusions_are_turned_off_after_the_users_own_flags(jaxlib):
    jaxlib((0, 10, 2))
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    backend_start.turn_off_ynn_fusions(environ)
    assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {backend_start.YNN_FUSIONS_OFF}"
    backend_start.turn_off_ynn_fusions(environ)  # a second start adds nothing
    assert environ["XLA_FLAGS"].count(backend_start.YNN_FUSION_FLAG) == 1


def test_a_user_who_chose_the_fusions_keeps_them(jaxlib):
    jaxlib((0, 10, 2))
    environ = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    backend_start.turn_off_ynn_fusions(environ)
    assert environ == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}


@pytest.mark.parametrize("version", [None, (0, 4, 34), (0, 8, 0)])
def test_jaxlibs_without_the_flag_get_none(jaxlib, version):
    """XLA stops a process whose XLA_FLAGS name a flag it does not know."""
    jaxlib(version)
    environ = {}
    backend_start.turn_off_ynn_fusions(environ)
    assert environ == {}


def test_the_installed_jaxlib_version_reads_as_numbers():
    version = backend_start.jaxlib_version()
    if importlib.util.find_spec("jaxlib") is None:
        assert version is None
    else:
        assert len(version) == 3 and all(isinstance(n, int) for n in version)


def test_jax_started_tells_whether_xla_has_read_its_flags():
    jax = pytest.importorskip("jax", reason="JAX is not installed: pip install -r requirements-backends.txt")
    jax.numpy.zeros(1).block_until_ready()
    assert backend_start.jax_started()
