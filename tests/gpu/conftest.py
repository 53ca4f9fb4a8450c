import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="session")
def backend():
    from eclip_ray.partition.cuda import CudaGreenBackend

    be = CudaGreenBackend(0)
    yield be
    be.close()


@pytest.fixture(scope="session")
def pool(backend):
    from eclip_ray.partition import StreamPool
    from eclip_ray.partition.layout import Layout, PartitionSpec, ladder

    base = ladder(backend.geometry(), 2)
    extra = (
        PartitionSpec("mid", 32, 32),  # a split of a split: slots 32..63
        PartitionSpec("whole-b", 0, backend.geometry().sm_count),  # a second whole-GPU stream
    )
    with StreamPool(backend, Layout(base.geometry, base.partitions + extra)) as p:
        yield p
