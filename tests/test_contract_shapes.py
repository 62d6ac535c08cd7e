"""One input-shape grammar (contract/shapes.py) for the API, the CLI, the inspector and the
engine: each accepts and refuses the same texts."""

import pytest

from contract.shapes import ShapeError, parse_shape, parse_shapes

ACCEPTED = {
    "1,3,224,224": (1, 3, 224, 224),
    " [1, 3, 224, 224] ": (1, 3, 224, 224),
    "1x3x32x32": (1, 3, 32, 32),
    "1 16000": (1, 16000),
    "8": (8,),
}
REFUSED = ["", "1,3,a,4", "0,3,4,4", "1,-3,4,4", "1,2,3,4,5,6,7,8,9", "1,3,2000000", "[]"]


@pytest.mark.parametrize(("text", "shape"), ACCEPTED.items())
def test_accepted_shapes(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", REFUSED)
def test_refused_shapes_say_why(text: str) -> None:
    with pytest.raises(ShapeError, match="expected"):
        parse_shape(text)


def test_several_inputs_are_separated_by_semicolons() -> None:
    assert parse_shapes("1,3,8,8; 1,4") == [(1, 3, 8, 8), (1, 4)]
    with pytest.raises(ShapeError):
        parse_shapes(" ; ")


@pytest.mark.parametrize("text", [*ACCEPTED, *REFUSED[1:]])
def test_every_process_reads_the_same_grammar(text: str) -> None:
    from app.api.uploads_common import parse_input_shape
    from app.core.errors import ApiError
    from cli.prune import CliError
    from cli.prune import parse_shape as cli_shape
    from worker.engine.errors import EngineError
    from worker.engine.load.loaders import parse_input_shape as engine_shapes

    readings = []
    for read, errors in (
        (lambda t: tuple(parse_input_shape(t) or ()), ApiError),
        (lambda t: tuple(cli_shape(t) or ()), CliError),
        (lambda t: engine_shapes(t)[0], EngineError),
    ):
        try:
            readings.append(read(text))
        except errors:
            readings.append(None)
    assert len(set(readings)) == 1, readings
