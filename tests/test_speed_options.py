"""Speed options of the search step: what they change (rounding only) and what they must not
(the step never waits for the device; gradients keep the memory format)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from goldnas_ray.core.config import ConfigError
from goldnas_ray.core.operations import FactorizedReduce
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.data import Augment


def _steps(cfg, x, y, n=3):
    search = GoldSearch(cfg, tuple(x.shape[1:]), 10)
    search.schedule.lam = 0.1
    search.model.train()
    losses = [float(search.train_step(x, y)[0]) for _ in range(n)]
    return search, losses


def test_channels_last_changes_only_rounding():
    """NHWC convolutions add in another order: from the same start the same steps agree to
    float32 rounding. Where a batch-norm output sits within rounding of zero, the ReLU after
    it may switch, so single gradients can differ by more; a whole search drifts apart over
    hundreds of steps as it does between two CPUs (docs/performance.md, "Results and the options")."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    nchw, l1 = _steps(tiny_config(channels_last=False), x, y)
    nhwc, l2 = _steps(tiny_config(channels_last=True), x, y)
    assert next(nhwc.model.stem.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert l1 == pytest.approx(l2, rel=1e-4)
    grads = []
    for search in (GoldSearch(tiny_config(channels_last=False), (3, 16, 16), 10),
                   GoldSearch(tiny_config(channels_last=True), (3, 16, 16), 10)):
        logits = search.model(x.contiguous(memory_format=search.memory_format))
        F.cross_entropy(logits, y).backward()
        grads.append((logits.detach(), torch.cat([p.grad.flatten() for p in search.model.parameters()])))
    (logits1, g1), (logits2, g2) = grads
    torch.testing.assert_close(logits1, logits2, rtol=1e-4, atol=1e-5)
    assert (g1 - g2).norm() / g1.norm() < 1e-2


def test_factorized_reduce_gradient_keeps_channels_last():
    """Slicing's own gradient is NCHW; in an NHWC network every element-wise backward that
    meets it runs several times slower."""
    torch.manual_seed(0)
    op = FactorizedReduce(8, 8, affine=False).to(memory_format=torch.channels_last)
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    op(x).square().sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    # and the gradient is the slice's: same result from an NCHW copy
    ref = FactorizedReduce(8, 8, affine=False)
    ref.load_state_dict(op.state_dict())
    x2 = x.detach().contiguous().requires_grad_()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def _epoch_under(search, x, y, augment, device, check, steps_only=False):
    """One search epoch of augmented, normalised batches cut from uint8 images, under ``check``
    (a context manager), from cold caches: every per-alive-set constant is made inside it.
    ``steps_only``: the steps without the reads that end the epoch."""
    from goldnas_ray.data import batches as batch_module
    from goldnas_ray.data import iterate_batches

    batch_module._CONSTANTS.clear()
    search.model._constants.clear()
    batches = iterate_batches(x, y, 16, 0, search.epoch, augment=augment, mean=(0.5,) * 3, std=(0.25,) * 3,
                              device=device)
    with check:
        return search.train_steps(batches) if steps_only else search.train_epoch(batches)


AUGMENTS = {"cifar": Augment(crop_padding=2, flip=True, cutout=4, color_jitter=True),
            "imagenet": Augment(resized_crop=12, flip=True, eval_size=12)}


@pytest.mark.parametrize("cost", ["flops", "ops"])
@pytest.mark.parametrize("augment", list(AUGMENTS))
def test_a_search_epoch_never_waits_for_the_device(cost, augment):
    """Per step, nothing is read back from the device and nothing is copied to it blocking: the
    running sums are read once at the end of the epoch, constants of the cost term and the
    normalisation are copied once (tests/transfers.py counts it on any device)."""
    from transfers import DeviceTransfers

    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 10, (64,))
    search = GoldSearch(tiny_config(cost=cost), (3, 16, 16) if augment == "cifar" else (3, 12, 12), 10)
    search.schedule.lam = 0.1  # the resource term is part of every step
    check = DeviceTransfers([search.model])
    stats = _epoch_under(search, x, y, AUGMENTS[augment], "cpu", check)
    assert stats.images == 64 and stats.loss > 0
    assert check.counts == {"read": 2}, check.where  # the loss sum and the correct count, once each


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("augment", list(AUGMENTS))
def test_a_search_epoch_on_cuda_under_sync_debug_mode(augment):
    """The same epoch's steps with torch.cuda.set_sync_debug_mode('error'): any synchronising
    call inside them raises (the epoch's two reads come after the steps)."""
    import contextlib

    @contextlib.contextmanager
    def strict():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 10, (64,))
    search = GoldSearch(tiny_config(), (3, 16, 16) if augment == "cifar" else (3, 12, 12), 10, device="cuda")
    search.schedule.lam = 0.1
    loss_sum, correct, images = _epoch_under(search, x, y, AUGMENTS[augment], "cuda", strict(), steps_only=True)
    assert images == 64 and float(loss_sum) > 0 and 0 <= int(correct) <= 64


def test_bf16_autocast_trains_and_stays_close_to_float32():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    _, l32 = _steps(tiny_config(amp="off"), x, y, n=2)
    _, l16 = _steps(tiny_config(amp="bf16"), x, y, n=2)
    assert all(torch.isfinite(torch.tensor(l16)))
    assert l16[0] == pytest.approx(l32[0], rel=0.05)


@pytest.mark.parametrize("key, value, message", [
    ("amp", "fp16", "search.amp: 'fp16' is not one of 'off' or 'bf16'"),
    ("channels_last", "maybe", "search.channels_last: input should be a valid boolean"),
])
def test_speed_options_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**{key: value})


def test_the_retrain_steps_never_read_the_device_and_its_evaluation_reads_once(digits):
    """The retrain's steps, like the search's, never wait for the device: the epoch reads its
    loss sum and correct count once, the evaluation its correct count once."""
    from transfers import DeviceTransfers

    from goldnas_ray.core.comm import LocalComm
    from goldnas_ray.data import iterate_batches
    from goldnas_ray.data import batches as batch_module
    from goldnas_ray.retrain.recipe import Retrainer

    search = GoldSearch(tiny_config(), (3, 16, 16), 10)
    trainer = Retrainer(search.model.genotype(), tiny_config().retrain.model_copy(update={"drop_path": 0.3}), seed=0)
    torch.manual_seed(0)
    x, y = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8), torch.randint(0, 10, (64,))
    batch_module._CONSTANTS.clear()
    batches = iterate_batches(x, y, 16, 0, 0, augment=AUGMENTS["cifar"], mean=(0.5,) * 3, std=(0.25,) * 3,
                              device="cpu")
    check = DeviceTransfers([trainer.model])
    with check:
        loss_sum, correct, images = trainer.train_steps(batches, 0.1, LocalComm())
    assert check.counts == {} and images == 64, check.where
    data_x, data_y = x[:40], y[:40]
    from goldnas_ray.data import Dataset
    data = Dataset("t", data_x, data_y, data_x, data_y, 10, (0.5,) * 3, (0.25,) * 3)
    batch_module._CONSTANTS.clear()  # made again under the new check
    check = DeviceTransfers([trainer.model])
    with check:
        accuracy = trainer.evaluate(data)
    assert check.counts == {"read": 1} and 0 <= accuracy <= 1, check.where


def test_the_transfer_hook_counts_every_way_a_device_value_reaches_the_host():
    from transfers import DeviceTransfers

    layer = torch.nn.Linear(3, 2)
    with torch.no_grad(), DeviceTransfers([layer]) as check:
        out = layer.weight * 2  # computed from the device: on the device
        out.sum().item(), out.tolist(), out.cpu(), out.numpy(), out[out > 0]
        torch.ones(3).tolist()  # a host tensor: no read
    assert check.counts == {"read": 5}, check.where
    assert [w for w in check.where if "Tensor." in w] == ["read: Tensor.tolist()", "read: Tensor.cpu()",
                                                            "read: Tensor.numpy()"]
