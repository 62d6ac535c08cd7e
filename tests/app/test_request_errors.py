"""Bodies that are not JSON, or not sent as JSON, on a JSON route: problems that say so."""

import pytest

from tests.app.helpers import AUTH_A, assert_problem

JSON = {**AUTH_A, "Content-Type": "application/json"}


def test_a_json_syntax_error_gives_line_column_and_reason(client):
    body = b'{\n  "model_id": "mdl_x",\n  "prune": {"ratio": 0.5,}\n}'
    problem = assert_problem(
        client.post("/v1/jobs", headers=JSON, content=body), 400, "invalid_json"
    )
    position = body.index(b",}") + 1
    assert (problem["line"], problem["column"], problem["position"]) == (3, 26, position)
    assert "line 3, column 26" in problem["detail"]
    assert "Expecting property name" in problem["detail"]
    assert "errors" not in problem  # no offset posing as a field name


def test_a_truncated_body_is_invalid_json(client):
    problem = assert_problem(
        client.post("/v1/jobs", headers=JSON, content=b'{"model_id": '), 400, "invalid_json"
    )
    assert problem["line"] == 1 and problem["column"] == 14


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_without_the_json_content_type_is_415(client, content_type):
    headers = {**AUTH_A, **({"Content-Type": content_type} if content_type else {})}
    resp = client.post("/v1/jobs", headers=headers, content=b'{"model_id": "mdl_x"}')
    problem = assert_problem(resp, 415, "unsupported_media_type")
    assert "application/json" in problem["detail"]
    assert (content_type or "none") in problem["detail"]


def test_json_with_a_charset_or_a_json_suffix_is_read(client):
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        resp = client.post(
            "/v1/jobs",
            headers={**AUTH_A, "Content-Type": content_type},
            content=b'{"model_id": "mdl_missing"}',
        )
        assert_problem(resp, 404, "not_found")  # parsed and validated: the model is unknown


def test_a_missing_body_is_still_a_validation_error(client):
    problem = assert_problem(client.post("/v1/jobs", headers=JSON), 422, "validation_error")
    assert problem["errors"][0]["field"] == "body"
