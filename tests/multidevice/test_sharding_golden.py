"""Golden per-parameter shardings of every model family under each rule preset (abstract evaluation only).

A failure names each parameter whose spec, shape or logical axes changed. When the change is intended, rewrite the
golden files with ``AVATARJAX_UPDATE_GOLDEN=1 .venv/bin/pytest tests/multidevice/test_sharding_golden.py`` and
commit them with the change.
"""

import dataclasses
import json
import os

import pytest

from avatarjax.config import load_config
from avatarjax.parallel import rules as rules_lib
from avatarjax.profiling import sharding
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "sharding"
UPDATE = os.environ.get("AVATARJAX_UPDATE_GOLDEN") == "1"
UPDATE_HINT = ("if the change is intended, rewrite the golden files: "
               "AVATARJAX_UPDATE_GOLDEN=1 .venv/bin/pytest tests/multidevice/test_sharding_golden.py")

# model family -> its smallest config
CONFIGS = {
    "cogportrait": "cogportrait/synthface_tiny.py",
    "dac": "dac/synthface_tiny.py",
    "face_reader": "face_reader/synthface_tiny.py",
    "instructavatar": "instructavatar/synthface_tiny.py",
    "lm": "lm/synthface_tiny.py",
    "motion_vae": "motion_vae/synthface_tiny.py",
    "posnet": "posnet/synthface.py",
    "reaction": "reaction/synthface_tiny.py",
    "speechvideo": "speechvideo/synthface_tiny.py",
    "video_tokenizer": "video_tokenizer/synthface_tiny.py",
    "wan_vae": "wan_vae/synthface_tiny.py",
}
PRESETS = ("dp", "fsdp", "fsdp_tp")
SEQUENCE_PARALLEL = ("cogportrait",)  # the DiT: long video-token sequences
CASES = [(m, p) for m in CONFIGS for p in PRESETS] + [(m, "sp") for m in SEQUENCE_PARALLEL]

# Fully replicated under fsdp at or above this many elements fails the replication test.
MIN_ELEMENTS = 4096
# Known gaps (param path -> why), each checked to still be a gap so the list cannot go stale.
KNOWN_REPLICATED: dict[tuple[str, str], str] = {}  # (model, parameter path) -> why it may stay replicated


@pytest.fixture(scope="module")
def states():
    cache = {}

    def get(model):
        if model not in cache:
            cfg = load_config(str(REPO / "configs" / CONFIGS[model]), [])
            cache[model] = (cfg, sharding.abstract_model_state(cfg))
        return cache[model]

    return get


@pytest.fixture(scope="module")
def dumps(states):
    cache = {}

    def get(model, preset):
        if (model, preset) not in cache:
            cfg, state = states(model)
            cache[model, preset] = sharding.sharding_dump(cfg, preset, sharding.GOLDEN_MESHES[preset], state=state)
        return cache[model, preset]

    return get


@pytest.mark.parametrize("model,preset", CASES, ids=[f"{m}__{p}" for m, p in CASES])
def test_sharding_matches_golden(model, preset, dumps):
    current = dumps(model, preset)
    path = GOLDEN / f"{model}__{preset}.json"
    if UPDATE or not path.exists():
        sharding.write(current, path)
        if not UPDATE:
            pytest.fail(f"{path} did not exist and was written now: review and commit it")
        return
    golden = json.loads(path.read_text())
    changes = sharding.diff(golden, current)
    assert not changes, (f"sharding of {model} under preset '{preset}' changed ({path.name}):\n  "
                         + "\n  ".join(changes[:40]) + f"\n{UPDATE_HINT}")


def test_no_stale_golden_files():
    expected = {f"{m}__{p}.json" for m, p in CASES}
    extra = sorted(p.name for p in GOLDEN.glob("*.json") if p.name not in expected)
    assert not extra, f"golden files with no test case: {extra}; delete them"


def test_no_large_parameter_replicated_under_fsdp(dumps):
    unexpected, seen = [], set()
    for model in CONFIGS:
        for path, row in sharding.replicated_params(dumps(model, "fsdp"), MIN_ELEMENTS).items():
            if (model, path) in KNOWN_REPLICATED:
                seen.add((model, path))
            else:
                unexpected.append(f"{model}: {path} shape {row['shape']} logical {row['logical']}")
    assert not unexpected, (
        f"parameters with >= {MIN_ELEMENTS} elements fully replicated under fsdp (give them logical axis names "
        "that the fsdp rules shard, e.g. 'embed'):\n  " + "\n  ".join(unexpected))
    stale = set(KNOWN_REPLICATED) - seen
    assert not stale, f"no longer replicated, remove from KNOWN_REPLICATED: {sorted(stale)}"


def test_fsdp_shards_the_bulk_of_every_model(dumps):
    """Under fsdp (2-way) and fsdp_tp (2 x 2) the per-device parameter bytes of every family shrink by close to
    the sharding factor (small norms and biases, and convolutions with 3 output channels, stay replicated).
    Convolutional families shard their kernels' output channels: the motion VAE, Wan VAE and DAC were fully
    replicated under fsdp before conv_out had a rule."""
    for model in CONFIGS:
        total = dumps(model, "dp")["summary"]["param_bytes"]
        assert dumps(model, "dp")["summary"]["param_bytes_per_device"] == total
        fsdp = dumps(model, "fsdp")["summary"]["param_bytes_per_device"]
        assert fsdp < 0.55 * total, (model, fsdp / total)
        tp = dumps(model, "fsdp_tp")["summary"]["param_bytes_per_device"]
        assert tp <= fsdp, (model, tp, fsdp)


@pytest.mark.parametrize("model", ["lm", "motion_vae"])
def test_dump_specs_are_the_trainers(model, states, dumps):
    """Every spec in the dump is the one the trainer's own state construction gives (on a real 8-device mesh),
    the fitted conv axes included (the motion VAE's RGB output conv stays replicated)."""
    import jax
    from flax import nnx

    from avatarjax.parallel.mesh import make_mesh
    from avatarjax.registry import TASKS
    from avatarjax.train import optim, state as state_lib

    cfg, _ = states(model)
    mesh = make_mesh(dataclasses.replace(cfg.mesh, **sharding.GOLDEN_MESHES["fsdp_tp"]), jax.devices()[:8])
    rules = rules_lib.resolve("fsdp_tp")
    tx, _ = optim.make_optimizer(cfg.optim, cfg.train.steps)
    task = TASKS.get(cfg.task)
    _, abstract = state_lib.abstract_state(lambda r: task.build_model(cfg, r), tx, False, mesh, rules)
    with nnx.logical_axis_rules(rules):
        specs = state_lib.state_specs(abstract, tx, dict(mesh.shape))
    dump = dumps(model, "fsdp_tp")["params"]
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(specs.params)}
    assert set(flat) == set(dump)
    for path, spec in flat.items():
        spec = spec.get_value() if hasattr(spec, "get_value") else spec
        assert sharding._spec_entries(spec, len(dump[path]["shape"])) == dump[path]["spec"], path
    if model == "motion_vae":
        assert dump["decoder/conv_out/kernel"]["spec"] == [None, None, None, None]  # 3 channels: replicated
        assert dump["decoder/conv_in/kernel"]["spec"][-1] == "fsdp"
        return
    gate = dumps("lm", "fsdp_tp")["params"]["layers/mlp/gate/kernel"]
    assert gate["spec"] == [None, "fsdp", "tensor"]
    assert gate["per_device"] == [gate["shape"][0], gate["shape"][1] // 2, gate["shape"][2] // 2]


def test_a_silently_replicated_weight_is_named(dumps):
    import copy

    golden = dumps("lm", "fsdp")
    changed = copy.deepcopy(golden)
    changed["params"]["layers/mlp/gate/kernel"]["spec"] = [None, None, None]
    del changed["params"]["final_norm/scale"]
    lines = sharding.diff(golden, changed)
    assert len(lines) == 2
    assert lines[0].startswith("params final_norm/scale: removed")
    assert "layers/mlp/gate/kernel: spec [None, 'fsdp', None] -> [None, None, None]" in lines[1]
    assert json.loads(sharding.to_json(golden)) == golden  # the file format round-trips


def _axis_reuse(dump) -> list[str]:
    return [f"{path}: {p}" for path, row in dump["params"].items() for p in row.get("problems", ()) if "twice" in p]


@pytest.mark.parametrize("config", ["instructavatar/synthface_small.py", "instructavatar/paper.py",
                                    "speechvideo/synthface_small.py"])
def test_no_kernel_names_a_mesh_axis_twice_at_larger_sizes(config):
    """jax rejects a PartitionSpec that uses one mesh axis on two dimensions; the tiny configs used for the golden
    files do not exercise every layer count (e.g. an even number of text-MLP layers)."""
    cfg = load_config(str(REPO / "configs" / config), [])
    state = sharding.abstract_model_state(cfg)
    for preset in PRESETS:
        reused = _axis_reuse(sharding.sharding_dump(cfg, preset, sharding.GOLDEN_MESHES[preset], state=state))
        assert not reused, f"{config} under {preset}: " + "; ".join(reused[:5])


def test_no_golden_case_names_a_mesh_axis_twice(dumps):
    for model, preset in CASES:
        reused = _axis_reuse(dumps(model, preset))
        assert not reused, f"{model} under {preset}: " + "; ".join(reused[:5])
