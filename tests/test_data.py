"""The training stream: same seed, same data order; every sample once per epoch; batches as the model wants."""
import pytest

from aotrain.data.datamodule import ShardDataModule
from aotrain.data.shard_stream import SKIP_COLUMNS


@pytest.fixture(scope="module")
def pool(small_world):
    return small_world(n_samples=300, samples_per_shard=100) / "pool"


def _keys(stream):
    return [s["__key__"] for s in stream.samples()]


def _datamodule(pool, seed=0, **kw):
    return ShardDataModule(str(pool), "toy-vit-micro", batch_size=32, num_workers=0,
                           shuffle_buffer=50, seed=seed, **kw)


def test_same_seed_same_order_and_every_sample_once(pool):
    a, b = _datamodule(pool).stream(), _datamodule(pool).stream()
    order = _keys(a)
    assert order == _keys(b)
    assert len(order) == len(set(order)) == 300
    assert order != sorted(order), "samples are shuffled"


def test_new_epoch_and_new_seed_change_the_order(pool):
    stream = _datamodule(pool).stream()
    first = _keys(stream)
    stream.epoch += 1
    assert _keys(stream) != first
    assert _keys(_datamodule(pool, seed=1).stream()) != first


def test_loader_batches_are_full_and_shaped_for_the_model(pool):
    loader = _datamodule(pool).train_dataloader()
    batches = list(loader)
    assert len(batches) == 300 // 32  # drop_last: no short batch
    images, tokens, skipped = batches[0]
    assert images.shape == (32, 3, 32, 32) and tokens.shape == (32, 32)
    assert skipped.shape == (32, len(SKIP_COLUMNS)) and skipped.sum() == 0  # a clean pool, no label rule
    assert loader.dataset.epoch == 1


def test_two_workers_are_deterministic(pool):
    def first_tokens():
        dm = ShardDataModule(str(pool), "toy-vit-micro", batch_size=16, num_workers=2,
                             shuffle_buffer=50, seed=3)
        return [t for _, t, _ in dm.train_dataloader()]
    a, b = first_tokens(), first_tokens()
    assert all((x == y).all() for x, y in zip(a, b)) and len(a) == len(b) > 0


def test_missing_pool_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pool folder not found"):
        ShardDataModule(str(tmp_path / "nope"), "toy-vit-micro")
