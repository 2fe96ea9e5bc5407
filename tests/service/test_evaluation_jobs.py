"""A job with a held-out ``evaluation`` set through the API: what is checked at submit, what a GET shows
and what the worker's claim carries."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.service.conftest import claim, create_job, job_body

HELD_OUT = [
    {"prompt": "5+5=", "label": "10"},
    {"prompt": "6+6=", "label": "12"},
    {"prompt": "7+7=", "label": "14"},
]


def _upload(client: TestClient, headers: dict, data: bytes) -> str:
    r = client.post(
        "/v1/files", files={"file": ("e.jsonl", data)}, data={"purpose": "dataset"}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_an_uploaded_evaluation_file_reaches_the_worker_as_rows(client: TestClient, alice: dict) -> None:
    file_id = _upload(
        client, alice, b'{"prompt": "5+5=", "label": "10"}\n{"prompt": "6+6=", "label": "12"}\n'
    )
    job = create_job(client, alice, evaluation={"dataset": {"file_id": file_id}, "every_steps": 2})
    assert job["spec"]["evaluation"]["dataset"]["file_id"] == file_id
    spec = claim(client, job["id"])["spec"]
    assert spec["evaluation"]["dataset"] == {
        "rows": [{"prompt": "5+5=", "label": "10"}, {"prompt": "6+6=", "label": "12"}]
    }
    # The stored spec keeps the file id: a second GET is unchanged.
    again = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()
    assert again["spec"]["evaluation"]["dataset"]["file_id"] == file_id


def test_inline_evaluation_rows_are_counted_in_a_get_and_sent_whole_to_the_worker(
    client: TestClient, alice: dict
) -> None:
    job = create_job(client, alice, evaluation={"dataset": {"rows": HELD_OUT}})
    assert job["spec"]["evaluation"]["dataset"]["inline_rows"] == 3
    assert "rows" not in job["spec"]["evaluation"]["dataset"]
    assert claim(client, job["id"])["spec"]["evaluation"]["dataset"]["rows"] == HELD_OUT


def test_another_tenants_file_as_evaluation_set_is_a_422_naming_the_field(
    client: TestClient, alice: dict, bob: dict
) -> None:
    bobs = _upload(client, bob, b'{"prompt": "1+1=", "label": "2"}\n')
    r = client.post("/v1/jobs", json=job_body(evaluation={"dataset": {"file_id": bobs}}), headers=alice)
    assert r.status_code == 422, r.text
    assert "evaluation.dataset.file_id" in r.text


def test_a_server_path_as_evaluation_set_is_refused_outside_dev_mode(client: TestClient, alice: dict) -> None:
    r = client.post("/v1/jobs", json=job_body(evaluation={"dataset": {"path": "/etc/passwd"}}), headers=alice)
    assert r.status_code == 422, r.text
    assert "evaluation.dataset.path" in r.text


def test_bad_evaluation_input_is_a_422_at_submit(client: TestClient, alice: dict) -> None:
    cases = {
        "empty rows": {"evaluation": {"dataset": {"rows": []}}},
        "eval metric without evaluation": {"checkpoints": {"best_metric": "eval/reward/mean"}},
        "pass@k with k = 1": {
            "evaluation": {"dataset": {"rows": HELD_OUT}},
            "checkpoints": {"best_metric": "eval/pass@k"},
        },
        "early stop on eval without evaluation": {
            "early_stop": {"metric": "eval/reward/mean", "patience": 2}
        },
        "keep_last 0": {"checkpoints": {"keep_last": 0}},
    }
    for name, overrides in cases.items():
        r = client.post("/v1/jobs", json=job_body(**overrides), headers=alice)
        assert r.status_code == 422, (name, r.text)
        field = next(iter(overrides))
        assert field in r.text, (name, r.text)
