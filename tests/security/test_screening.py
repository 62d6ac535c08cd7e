"""Static screening: hostile .pt2 and ONNX files are refused before anything deserializes or
runs them, and nothing they carry happens (no canary file, no file read or written, no
memory taken); ordinary models still load. Runs in-process against the engine (no
service), so each refusal is checked at the layer that makes it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.security import payloads
from worker.engine.errors import UnsupportedModel, describe_failure
from worker.engine.load import screen
from worker.engine.load.loaders import load_model
from worker.engine.load.sniff import sniff_format

REPO = Path(__file__).resolve().parents[2]


def _refused(path: Path, code: str) -> str:
    """The loader refuses `path` with `code` (and, for a .pt2 archive, so does the format
    sniffing the inspector runs before importing torch); returns the loader's message."""
    if path.suffix == ".pt2":
        with pytest.raises(UnsupportedModel) as sniffed:
            sniff_format(path)
        assert sniffed.value.code == code, sniffed.value.message
    with pytest.raises(UnsupportedModel) as loaded:
        load_model(path)
    assert loaded.value.code == code, loaded.value.message
    return loaded.value.message


def _onnx(path: Path):
    import onnx

    return onnx.load_model_from_string(path.read_bytes())


# --- .pt2: nothing is unpickled -------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        payloads.pt2_pickled_weight,
        payloads.pt2_pickled_constant,
        payloads.pt2_object_constant,
        lambda p, c: payloads.pt2_object_constant(p, c, prefix="custom_obj_"),
        payloads.pt2_extra_pickle_member,
        lambda p, c: payloads.pt2_extra_pickle_member(p, c, name="data/weights/weight_99"),
        lambda p, c: payloads.pt2_extra_pickle_member(p, c, name="data/aotinductor/model/x.so"),
        payloads.pt2_sample_inputs_gadget,
        payloads.pt2_sympy_injection,
        payloads.pt2_name_injection,
    ],
    ids=[
        "use_pickle-weight",
        "use_pickle-constant",
        "opaque-object",
        "torchbind-object",
        "innocent-member-name",
        "unreferenced-weight-record",
        "aoti-member",
        "sample-inputs-gadget",
        "sympy-expression",
        "fx-value-name",
    ],
)
def test_archives_that_would_run_code_are_refused_unexecuted(tmp_path, build):
    canary = tmp_path / "canary"
    path = build(tmp_path / "m.pt2", canary)
    _refused(path, "unsafe_format")
    assert not canary.exists()


@pytest.mark.slow
def test_the_pt2_payloads_are_live_without_the_screen(tmp_path):
    """Proof that the payloads above are real: torch.export.load (and running the
    program) on them, unscreened, in a child process, does create the canaries. (The
    value-name payload is not live in torch 2.14, whose code generator rewrites names into
    identifiers; the screen refuses it anyway, in case a later version does not.)"""
    cases = {
        "pickled_weight": payloads.pt2_pickled_weight,
        "opaque_object": payloads.pt2_object_constant,
        "sympy": payloads.pt2_sympy_injection,
    }
    paths = {}
    for name, build in cases.items():
        paths[name] = (
            build(tmp_path / f"{name}.pt2", tmp_path / f"{name}.canary"),
            tmp_path / f"{name}.canary",
        )
    script = textwrap.dedent("""
        import sys, warnings, torch
        warnings.simplefilter("ignore")
        for path in sys.argv[1:]:
            try:
                torch.export.load(path).module()(torch.randn(2, 3, 8, 8))
            except Exception:
                pass
    """)
    subprocess.run(
        [sys.executable, "-c", script, *(str(p) for p, _ in paths.values())],
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert {name: canary.exists() for name, (_, canary) in paths.items()} == dict.fromkeys(
        cases, True
    )


# --- .pt2: operators --------------------------------------------------------------------------


def test_from_file_read_is_refused_and_nothing_is_read(tmp_path):
    victim = tmp_path / "secret.txt"
    victim.write_text("root:x:0:0:secret")
    message = _refused(payloads.pt2_from_file(tmp_path / "m.pt2", victim), "unsupported_op")
    assert "from_file" in message and "secret" not in message and str(victim) not in message


def test_from_file_write_is_refused_and_the_file_is_unchanged(tmp_path):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\x01" * 1024)
    message = _refused(
        payloads.pt2_from_file(tmp_path / "m.pt2", victim, shared=True), "unsupported_op"
    )
    assert "from_file" in message
    assert victim.read_bytes() == b"\x01" * 1024


def test_in_place_on_the_input_is_refused(tmp_path):
    message = _refused(payloads.pt2_inplace_on_input(tmp_path / "m.pt2"), "unsupported_op")
    assert "add_" in message and "in place" in message


def test_in_place_on_a_view_of_a_parameter_is_refused(tmp_path):
    message = _refused(payloads.pt2_inplace_on_parameter(tmp_path / "m.pt2"), "unsupported_op")
    assert "relu_" in message and "weight_view" in message


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("torch.ops.aten.copy_.default", "not among"),
        ("torch.ops.aten.rand.default", "random"),
        ("torch.ops.aten.set_.source_Storage", "files"),
        ("torch.ops.higher_order.wrap_with_autocast", "higher-order"),
        ("torch.ops.mylib.custom.default", "custom"),
        ("builtins.eval", "not a torch operator"),
    ],
)
def test_operators_off_the_list_are_refused_by_name(tmp_path, target, reason):
    path = payloads.pt2_small_cnn(tmp_path / "m.pt2", dynamic=False)

    def edit(members, parsed):
        payloads._first_node(parsed["models/model.json"], "torch.ops.aten.relu_.default")[
            "target"
        ] = target

    payloads._pt2_edit(path, edit)
    message = _refused(path, "unsupported_op")
    assert target.removeprefix("torch.ops.").replace(".default", "") in message
    assert reason in message


def test_a_weight_declaring_more_than_its_record_is_refused(tmp_path):
    path = payloads.pt2_small_cnn(tmp_path / "m.pt2")

    def edit(members, parsed):
        meta = parsed["data/weights/model_weights_config.json"]["config"]["conv.weight"]
        members["data/weights/" + meta["path_name"]] = b""  # loader would allocate zeros
        meta["tensor_meta"]["sizes"] = [{"as_int": 1 << 20}, {"as_int": 1 << 10}]
        meta["tensor_meta"]["strides"] = [{"as_int": 1 << 10}, {"as_int": 1}]

    payloads._pt2_edit(path, edit)
    _refused(path, "too_large")


# --- .pt2: ordinary archives still load --------------------------------------------------------


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "static"])
def test_a_small_cnn_archive_loads(tmp_path, dynamic):
    import torch

    path = payloads.pt2_small_cnn(tmp_path / "m.pt2", dynamic=dynamic)
    assert sniff_format(path) == "pt2"
    loaded = load_model(path)
    assert loaded.format == "pt2"
    reference = torch.export.load(str(path)).module()
    x = torch.randn(*payloads.INPUT_SHAPE)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), reference(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_archives_load(tmp_path, name):
    import torch
    import torchvision

    model = torchvision.models.get_model(name, weights=None).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
    for dialect, prog in (("training", program), ("aten", program.run_decompositions())):
        path = tmp_path / f"{name}-{dialect}.pt2"
        torch.export.save(prog, str(path))
        screen.screen_pt2(path)
    assert load_model(tmp_path / f"{name}-training.pt2").format == "pt2"


def _anchor_grid_archive(path: Path, size: int) -> Path:
    """A detector's anchor grid (YOLOv8's make_anchors): arange, meshgrid, stack."""
    import torch

    class Anchors(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sy, sx = torch.meshgrid(
                torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij"
            )
            return x.mean() + torch.stack((sx, sy), -1).sum(-1)

    program = torch.export.export(Anchors(), (torch.randn(1, 1, 4, 4),))
    torch.export.save(program, str(path))
    return path


def test_a_detectors_anchor_grid_is_allowed(tmp_path):
    screen.screen_pt2(_anchor_grid_archive(tmp_path / "anchors.pt2", 8))


def test_an_anchor_grid_beyond_the_tensor_bound_is_refused(tmp_path):
    path = _anchor_grid_archive(tmp_path / "anchors.pt2", 64)
    with pytest.raises(UnsupportedModel, match="allowed for one tensor"):
        screen.screen_pt2(path, max_tensor_bytes=64 * 64 * 4 - 1)
    screen.screen_pt2(path, max_tensor_bytes=64 * 64 * 2 * 4)


def test_the_allowlist_matches_torch_schemas():
    """Every allowed aten operator exists in this torch, in-place ones are exactly those
    whose schema writes `self`, and every op whose output may alias `self` is a view."""
    import torch

    for target in sorted(screen.PT2_ALLOWED_OPS):
        if not target.startswith("torch.ops.aten."):
            continue
        name, overload = target.removeprefix("torch.ops.aten.").rsplit(".", 1)
        schema = getattr(getattr(torch.ops.aten, name), overload)._schema
        written = [a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write]
        assert (written == ["self"]) == screen._is_inplace(target), target
        assert not written or written == ["self"], target
        aliases = any(r.alias_info and not r.alias_info.is_write for r in schema.returns)
        if aliases:
            assert target in screen.PT2_VIEW_OPS, target
            assert schema.arguments[0].name == "self", target
    assert screen.PT2_VIEW_OPS <= screen.PT2_ALLOWED_OPS


def test_shape_expressions_are_arithmetic_only():
    for ok in [
        "Symbol('s77', positive=True, integer=True)",
        "Mul(Integer(64), Symbol('s77', positive=True, integer=True))",
        "2*s0 + 1",
        "FloorDiv(s0 - 1, 2) + 1",
        "Max(1, s1)",
    ]:
        screen.check_sym_expr(ok)
    for bad in [
        "__import__('os').system('id')",
        "s0.__class__",
        "Symbol('x' + 'y')",
        "Pow(Integer(2), Integer(100000000))",
        "2**2**64",
        "lambda: 0",
        "s0[0]",
        "exec('x')",
        'Symbol("s0")',
    ]:
        with pytest.raises(UnsupportedModel) as info:
            screen.check_sym_expr(bad)
        assert info.value.code == "unsafe_format", bad


# --- ONNX ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        payloads.onnx_function_if_external,
        payloads.onnx_sparse_external,
        payloads.onnx_constant_external,
        payloads.onnx_loop_external,
    ],
    ids=["function-if-branch", "sparse-initializer", "constant-attribute", "loop-body"],
)
def test_external_data_anywhere_is_refused(tmp_path, build, monkeypatch):
    # Relative locations resolve against the working directory: give it something to read.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x00\x00\x80\x3f")
    message = _refused(build(tmp_path / "m.onnx"), "external_data_forbidden")
    assert "external data" in message


def test_a_non_standard_domain_is_refused(tmp_path):
    message = _refused(payloads.onnx_custom_domain(tmp_path / "m.onnx"), "unsupported_op")
    assert "com.example.evil" in message


def test_an_imported_domain_no_node_uses_is_inert(tmp_path):
    from onnx import helper

    bias = helper.make_node("Constant", [], ["bias"], value_float=0.0)
    path = payloads._save_tiny_plus(
        tmp_path / "m.onnx", [bias], opsets=[("", 17), ("com.example.evil", 1)]
    )
    screen.screen_onnx(_onnx(path))


def test_domains_are_a_parameter(tmp_path):
    model = _onnx(payloads.onnx_custom_domain(tmp_path / "m.onnx"))
    screen.screen_onnx(model, domains=screen.DEFAULT_ONNX_DOMAINS | {"com.example.evil"})


def test_a_local_function_in_its_own_domain_is_allowed(tmp_path):
    from onnx import helper

    body = [helper.make_node("Relu", ["x"], ["y"])]
    function = helper.make_function(
        "local.lib", "MyRelu", ["x"], ["y"], body, [helper.make_opsetid("", 17)]
    )
    path = payloads._save_tiny_plus(
        tmp_path / "m.onnx",
        [
            helper.make_node("Constant", [], ["zero"], value_float=0.0),
            helper.make_node("MyRelu", ["zero"], ["bias"], domain="local.lib"),
        ],
        [function],
        [("", 17), ("local.lib", 1)],
    )
    screen.screen_onnx(_onnx(path))
    screen.check_onnx_allocations(_onnx(path), [payloads.INPUT_SHAPE])


_PEAK_SCRIPT = """
import json, resource, sys
from worker.engine.errors import UnsupportedModel
from worker.engine.load.loaders import load_model
import onnx, onnxruntime, torch  # paid for before the measurement starts
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_model(sys.argv[1])
    code = None
except UnsupportedModel as exc:
    code = exc.code
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"code": code, "grew_kib": after - before}))
"""


@pytest.mark.parametrize(
    "build",
    [payloads.onnx_expand_bomb, payloads.onnx_allocation_bomb],
    ids=["expand-2^30", "constant-of-shape-2^40"],
)
def test_allocation_bombs_are_refused_without_allocating(tmp_path, build):
    path = build(tmp_path / "bomb.onnx")
    assert path.stat().st_size < 1024
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["code"] == "too_large"
    assert outcome["grew_kib"] < 128 << 10, outcome  # under 128 MiB for the whole check


def test_the_bound_is_configurable(tmp_path):
    model = _onnx(payloads.onnx_expand_bomb(tmp_path / "m.onnx", elements_log2=20))
    screen.check_onnx_allocations(model, [payloads.INPUT_SHAPE])  # 4 MiB: fine
    with pytest.raises(UnsupportedModel) as info:
        screen.check_onnx_allocations(model, [payloads.INPUT_SHAPE], max_tensor_bytes=1 << 20)
    assert info.value.code == "too_large" and "'big'" in info.value.message


def test_ordinary_onnx_still_loads(tmp_path):
    assert load_model(payloads.tiny_onnx(tmp_path / "m.onnx")).format == "onnx"


# --- error messages carry no data -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "index 1852400175 is out of bounds for dimension 0 with size 5",
            "index N is out of bounds for dimension N with size N",
        ),
        (
            "Given groups=1, weight of size [4, 3, 3, 3], expected input[1, 5, 8, 8] to have 3 "
            "channels",
            "Given groups=N, weight of size [4, 3, 3, 3], expected input[1, 5, 8, 8] "
            "to have N channels",
        ),
        (
            "shape torch.Size([2, 4]) vs torch.Size([3]) for float32 conv2d",
            "shape torch.Size([2, 4]) vs torch.Size([3]) for float32 conv2d",
        ),
        (
            "Got invalid dimensions {1,4,8,8} in /srv/data/uploads/m.onnx",
            "Got invalid dimensions {1,4,8,8} in <path>",
        ),
        ("value tensor([114, 111, 111, 116]) at 0x7ffd1234", "value tensor([N, N, N, N]) at N"),
    ],
)
def test_describe_failure_keeps_shapes_and_names_only(raw, expected):
    assert describe_failure(RuntimeError(raw)) == expected


def test_describe_failure_is_one_short_line():
    text = describe_failure(ValueError("line one\nline two 42\r" + "x" * 1000), limit=100)
    assert len(text) <= 100 and "\n" not in text and "42" not in text
    assert describe_failure(KeyError()) == "KeyError"
