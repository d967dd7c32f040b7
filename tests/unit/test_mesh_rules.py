import jax
import pytest
from jax.sharding import PartitionSpec as P

from avatarjax.config import MeshConfig
from avatarjax.errors import ShardingError
from avatarjax.parallel import rules
from avatarjax.parallel.mesh import check_batch, logical_to_spec, make_mesh, mesh_shape
from tests.conftest import tiny_config


def test_fill_axis():
    ici, dcn = mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=2), 8)
    assert ici == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    assert dcn["data"] == 1


def test_multislice_sizes():
    ici, dcn = mesh_shape(MeshConfig(data=-1, fsdp=2, dcn_data=2), 8)
    assert ici["data"] == 2 and dcn["data"] == 2


@pytest.mark.parametrize("cfg, message", [
    (MeshConfig(data=-1, fsdp=-1), "only one mesh axis may be -1"),
    (MeshConfig(data=3, fsdp=1), "has 3 devices per slice but 8"),
    (MeshConfig(data=-1, fsdp=3), "no whole number"),
    (MeshConfig(data=-1, dcn_data=3), "does not divide"),
])
def test_bad_mesh(cfg, message):
    with pytest.raises(ShardingError, match=message):
        mesh_shape(cfg, 8)


def test_mesh_axes_and_types():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_presets_map_logical_names():
    r = rules.resolve("fsdp_tp")
    assert logical_to_spec(("embed", "mlp"), r) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "act_embed"), r) == P(("data", "fsdp"), None, None)
    assert logical_to_spec(("layers", "embed", "heads", "head_dim"), r) == P(None, "fsdp", "tensor", None)
    sp = rules.resolve("fsdp_tp_sp")
    assert logical_to_spec(("batch", "length"), sp) == P(("data", "fsdp"), "sequence")
    dp = rules.resolve("dp")
    assert logical_to_spec(("embed", "mlp"), dp) == P(None, None)


def test_override_rules():
    r = rules.resolve("fsdp", (("mlp", ("tensor",)), ("embed", ())))
    assert logical_to_spec(("embed", "mlp"), r) == P(None, "tensor")


def test_batch_must_divide_naming_the_axis():
    mesh = make_mesh(MeshConfig(data=4, fsdp=2), jax.devices())
    with pytest.raises(ShardingError, match=r"train.batch_size=6 does not divide the batch mesh axes \('data', 'fsdp'\)"):
        check_batch(6, mesh, rules.resolve("fsdp"))


def test_parameter_that_does_not_divide_fails_before_compiling(tmp_path):
    from avatarjax.train.loop import Trainer

    cfg = tiny_config("--config.mesh.data=2", "--config.mesh.fsdp=1", "--config.mesh.tensor=4",
                      "--config.model.num_kv_heads=2")
    with pytest.raises(ShardingError, match=r"parameter layers/attn/k_proj/(kernel|bias): dimension [12] of size 2 "
                                            r"\(logical axis 'kv_heads'\) does not divide mesh axis 'tensor' of size 4"):
        Trainer(cfg, tmp_path)


def test_fit_spec_replicates_only_conv_axes_that_cannot_shard():
    from avatarjax.parallel.mesh import fit_spec

    shape = {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    conv = ("kernel", "kernel", "conv_in", "conv_out")
    assert fit_spec((3, 3, 16, 32), P(None, None, None, "fsdp"), shape, conv) == P(None, None, None, "fsdp")
    assert fit_spec((3, 3, 16, 3), P(None, None, None, "fsdp"), shape, conv) == P(None, None, None, None)
    # a Dense layer (embed, conv_out): fsdp already shards embed, so conv_out cannot reuse it
    assert fit_spec((32, 64), P("fsdp", "fsdp"), shape, ("embed", "conv_out")) == P("fsdp", None)
    # other axes are never relaxed: check_divisible names them instead
    assert fit_spec((5, 32), P("tensor", None), shape, ("heads", "embed")) == P("tensor", None)
    assert fit_spec((5, 32), P("fsdp", None), shape, None) == P("fsdp", None)
