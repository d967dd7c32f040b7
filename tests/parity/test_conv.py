"""Convolution layers against torch.nn (same weights): Conv2d, stride-2 downsample, depthwise Conv1d, GroupNorm,
BatchNorm (training statistics and running averages)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from avatarjax.nn import conv  # noqa: E402


@pytest.fixture(autouse=True)
def _no_mesh():
    with nnx.use_eager_sharding(False):
        yield


def _t(x):
    return torch.from_numpy(np.asarray(x))


def test_conv2d_and_downsample_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 10, 4)).astype(np.float32)
    ours = conv.Conv(4, 6, 3, rngs=nnx.Rngs(0))
    ref = torch.nn.Conv2d(4, 6, 3, padding=1)
    ref.weight.data = _t(ours.kernel[...]).permute(3, 2, 0, 1).contiguous()
    ref.bias.data = _t(ours.bias[...])
    want = ref(_t(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(ours(jnp.asarray(x)), want, atol=1e-5)

    down = conv.Downsample2d(4, rngs=nnx.Rngs(1))
    ref = torch.nn.Conv2d(4, 4, 3, stride=2)
    ref.weight.data = _t(down.conv.kernel[...]).permute(3, 2, 0, 1).contiguous()
    ref.bias.data = _t(down.conv.bias[...])
    xt = torch.nn.functional.pad(_t(x).permute(0, 3, 1, 2), (0, 1, 0, 1))
    want = ref(xt).permute(0, 2, 3, 1).detach().numpy()
    got = down(jnp.asarray(x))
    assert got.shape == (2, 4, 5, 4)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_depthwise_conv1d_matches_grouped_torch_conv_and_respects_mask():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 17, 8)).astype(np.float32)
    ours = conv.DepthwiseConv1d(8, 5, rngs=nnx.Rngs(0))
    ref = torch.nn.Conv1d(8, 8, 5, padding=2, groups=8)
    ref.weight.data = _t(ours.kernel[...]).T[:, None, :].contiguous()
    ref.bias.data = _t(ours.bias[...])
    want = ref(_t(x).permute(0, 2, 1)).permute(0, 2, 1).detach().numpy()
    np.testing.assert_allclose(ours(jnp.asarray(x)), want, atol=1e-5)

    mask = np.arange(17)[None] < np.array([[17], [11]])
    garbage = x.copy()
    garbage[1, 11:] = 1e6
    got = ours(jnp.asarray(garbage), jnp.asarray(mask))
    clean = ours(jnp.asarray(np.where(mask[..., None], x, 0)))
    np.testing.assert_allclose(got[1, :11], clean[1, :11], atol=1e-5)


def test_group_and_batch_norm_match_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 6, 8)).astype(np.float32) * 3 + 1
    gn = conv.GroupNorm(8, 4)
    ref = torch.nn.GroupNorm(4, 8, eps=1e-6)
    want = ref(_t(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(gn(jnp.asarray(x)), want, atol=1e-5)

    seq = rng.standard_normal((3, 7, 8)).astype(np.float32) * 2 + 0.5
    bn = conv.BatchNorm(8)
    ref = torch.nn.BatchNorm1d(8)
    want = ref(_t(seq).permute(0, 2, 1)).permute(0, 2, 1).detach().numpy()
    np.testing.assert_allclose(bn(jnp.asarray(seq), use_running_average=False), want, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], ref.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.var[...], ref.running_var.numpy(), atol=1e-5)
    ref.eval()
    want = ref(_t(seq).permute(0, 2, 1)).permute(0, 2, 1).detach().numpy()
    np.testing.assert_allclose(bn(jnp.asarray(seq), use_running_average=True), want, atol=1e-5)
