"""Every input is validated at the edge: uploads, header values, spec bounds, metadata.

Each case is refused with a 4xx that names the field (never a header's value), on SQLite and on Postgres,
rather than a 500 or a job accepted here that would fail later on a worker.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from rlft_contracts.settings import Settings
from service.app import create_app
from tests.security.conftest import WORKER, claim, create_job, job_body, wpost
from tests.support.servers import ServerThread

SECRET = "s3cret-canary-7f1e"
GOOD_ID = f"job_{'0' * 24}"


def _post_raw(client: TestClient, path: str, text: str, headers: dict) -> httpx.Response:
    """POST a JSON text as is: json= would refuse or re-encode what a hostile client sends."""
    return client.post(path, content=text.encode(), headers={**headers, "Content-Type": "application/json"})


def _fields(r: httpx.Response) -> str:
    """The fields and messages of a 422, as one string to search."""
    assert r.status_code == 422, (r.status_code, r.text[:500])
    detail = r.json()["detail"]
    items = detail if isinstance(detail, list) else [detail]
    return " | ".join(f"{d.get('field')}: {d.get('msg') or d.get('message')}" for d in items)


# --- reward headers (item 5): names are tokens, values visible ASCII; the value never comes back ---

BAD_HEADERS = [
    ({"Authorization": f"Bearer {SECRET} "}, "reward header Authorization"),  # trailing whitespace
    ({"Authorization": f" Bearer {SECRET}"}, "reward header Authorization"),  # leading whitespace
    ({"Authorization": f"Bearer {SECRET}\r\nX-Injected: 1"}, "reward header Authorization"),
    ({"Authorization": f"Bearer {SECRET}\n"}, "reward header Authorization"),
    ({"Authorization": f"Bearer {SECRET}\x00"}, "NUL"),
    ({"Authorization": f"Bearer {SECRET}\u00e9"}, "reward header Authorization"),  # non-ASCII
    ({"X-Key": f"{SECRET}\x7f"}, "reward header X-Key"),  # DEL is not visible
    ({"Bad Name": SECRET}, "name is not an HTTP token"),
    ({"X-Key:": SECRET}, "name is not an HTTP token"),
    ({"X-K\u00e9y": SECRET}, "name is not an HTTP token"),
    ({"": SECRET}, "name is not an HTTP token"),
    ({"X-Key": SECRET, "x-key": SECRET}, "names x-key twice"),
    ({"X-Key": "v" * 8193}, "longer than 8192"),
    ({f"X-{i}": SECRET for i in range(33)}, "at most 32"),
]


@pytest.mark.parametrize("headers, rule", BAD_HEADERS)
def test_bad_reward_headers_are_refused_at_submit(client: TestClient, alice: dict, headers, rule) -> None:
    body = job_body(reward={"url": "http://127.0.0.1:9/score", "headers": headers})
    r = _post_raw(client, "/v1/jobs", json.dumps(body), alice)
    assert rule in _fields(r)
    assert SECRET not in r.text and "Bearer" not in r.text
    assert client.get("/v1/jobs", headers=alice).json()["data"] == []


@pytest.mark.parametrize("headers, rule", BAD_HEADERS)
def test_bad_reward_headers_are_refused_by_the_dry_run(
    client: TestClient, alice: dict, headers, rule
) -> None:
    # A non-ASCII value must be refused here: the HTTP library would refuse it mid-request, as a 500.
    body = {
        "reward": {"url": "http://127.0.0.1:9/score", "headers": headers},
        "items": [{"prompt": "p", "completion": "c"}],
    }
    r = _post_raw(client, "/v1/rewards/validate", json.dumps(body), alice)
    assert rule in _fields(r)
    assert SECRET not in r.text and "Bearer" not in r.text


def test_good_headers_still_reach_the_endpoint(client: TestClient, alice: dict) -> None:
    from tests.service.test_rewards_validate import _odd_app

    with ServerThread(_odd_app()) as srv:
        body = {
            "reward": {"url": f"{srv.url}/auth", "headers": {"Authorization": "Bearer k", "X-T": "a\tb c"}},
            "items": [{"prompt": "p", "completion": "c"}],
        }
        r = client.post("/v1/rewards/validate", json=body, headers=alice)
    assert r.status_code == 200 and r.json()["rewards"] == [1.0], r.text


# --- text without NUL or lone surrogates (item 7) ---


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"dataset": {"rows": [{"prompt": "a\x00b"}]}}, "dataset.rows[0].prompt contains a NUL"),
        ({"dataset": {"rows": [{"prompt": "p", "label": "x\x00"}]}}, "dataset.rows[0].label contains a NUL"),
        (
            {"dataset": {"rows": [{"prompt": "p", "metadata": {"k\x00": 1}}]}},
            "a key in dataset.rows[0].metadata contains a NUL",
        ),
        (
            {"dataset": {"rows": [{"messages": [{"role": "user", "content": "c\x00"}]}]}},
            "dataset.rows[0].messages[0].content contains a NUL",
        ),
        ({"metadata": {"team": "a\x00"}}, "metadata.team contains a NUL"),
        ({"metadata": {"te\x00am": "a"}}, "a key in metadata contains a NUL"),
        ({"model": {"name_or_path": "m\x00"}}, "name_or_path contains a NUL"),
        ({"dataset": {"file_id": "file_\x00"}}, "file_id contains a NUL"),
        ({"dataset": {"rows": [{"prompt": "p\ud800"}]}}, "dataset.rows[0].prompt contains a lone surrogate"),
        ({"dataset": {"rows": [{"prompt": "p", "label": "\udfff"}]}}, "label contains a lone surrogate"),
        ({"metadata": {"team": "\ud83d"}}, "metadata.team contains a lone surrogate"),
        ({"model": {"name_or_path": "\ud800"}}, "name_or_path contains a lone surrogate"),
    ],
)
def test_nul_and_lone_surrogates_in_a_spec_are_422(client: TestClient, alice: dict, overrides, field) -> None:
    # json.dumps writes a lone surrogate as the "\ud800" escape, as a hostile client would.
    r = _post_raw(client, "/v1/jobs", json.dumps(job_body(**overrides)), alice)
    assert field in _fields(r)


def test_lone_surrogates_in_a_dry_run_are_422(client: TestClient, alice: dict) -> None:
    for item, where in [
        ({"prompt": "p\ud800", "completion": "c"}, "prompt contains a lone surrogate"),
        ({"prompt": "p", "completion": "c\x00"}, "completion contains a NUL"),
        ({"prompt": "p", "completion": "c", "label": ["\ud800"]}, "label[0] contains a lone surrogate"),
        ({"prompt": "p", "completion": "c", "metadata": {"k": 1e999}}, "metadata.k must be a finite"),
    ]:
        body = {"reward": {"url": "http://127.0.0.1:9/score"}, "items": [item]}
        assert where in _fields(_post_raw(client, "/v1/rewards/validate", json.dumps(body), alice))


def test_bad_query_and_path_values_are_422(client: TestClient, alice: dict) -> None:
    jid = create_job(client, alice)["id"]
    for url, field in [
        ("/v1/jobs?after=job_%00", "after"),
        ("/v1/jobs?after=" + "a" * 10_000, "after"),
        ("/v1/jobs?metadata.te%00am=x", "metadata"),
        ("/v1/jobs?metadata.team=x%00", "metadata.team"),
        ("/v1/jobs?metadata.team=" + "x" * 513, "metadata.team"),
        ("/v1/jobs?" + "&".join(f"metadata.k{i}=v" for i in range(65)), "metadata"),
        (f"/v1/jobs/{jid}/metrics?names=a%00b", "names.0"),
        (f"/v1/jobs/{jid}/metrics?names=" + "n" * 2001, "names.0"),
        ("/v1/jobs/job_%00", "job_id"),
        ("/v1/jobs/" + "j" * 10_000, "job_id"),
        (f"/v1/jobs/{jid}/checkpoints/ckpt_%00/archive", "ckpt_id"),
        ("/v1/files/file_%00", "file_id"),
    ]:
        r = client.get(url, headers=alice)
        assert field in _fields(r), url
    # A well-formed id that does not exist is still a 404, the same for every tenant.
    assert client.get(f"/v1/jobs/{GOOD_ID}", headers=alice).status_code == 404
    assert client.get(f"/v1/jobs?after={jid}", headers=alice).status_code == 200
    assert client.get("/v1/jobs?metadata.team=search", headers=alice).json()["data"][0]["id"] == jid
    assert client.get(f"/v1/jobs/{jid}/metrics?names=a,b&names=c", headers=alice).status_code == 200


def test_worker_routes_check_the_job_id_too(client: TestClient) -> None:
    r = client.post("/internal/v1/jobs/job_%00/claim", json={"worker_id": "w"}, headers=WORKER)
    assert "job_id" in _fields(r)


def test_idempotency_key_is_visible_ascii(client: TestClient, alice: dict) -> None:
    for key in ["a b", "k" * 256, "caf\u00e9"]:
        r = client.post("/v1/jobs", json=job_body(), headers={**alice, "Idempotency-Key": key.encode()})
        assert "idempotency-key" in _fields(r).lower()
    ok = client.post("/v1/jobs", json=job_body(), headers={**alice, "Idempotency-Key": "retry-1:a/b"})
    assert ok.status_code == 201


# --- finite numbers, strict types, bounds (items 7 and 8) ---


@pytest.mark.parametrize(
    "text, field",
    [
        ('"lora": {"alpha": "inf"}', "model.lora.alpha"),
        ('"lora": {"alpha": Infinity}', "model"),
        ('"lora": {"alpha": 1e999}', "model"),
        ('"lora": {"alpha": NaN}', "model"),
    ],
)
def test_non_finite_numbers_are_422(client: TestClient, alice: dict, text: str, field: str) -> None:
    body = json.dumps(job_body(model={"name_or_path": "tiny-qwen", "lora": {}}))
    body = body.replace('"lora": {}', text)
    assert field in _fields(_post_raw(client, "/v1/jobs", body, alice))


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_labels_and_metadata_in_rows_are_422(client: TestClient, alice: dict, value: str) -> None:
    body = json.dumps(job_body(dataset={"rows": [{"prompt": "p", "label": "L", "metadata": {"m": "M"}}]}))
    for text in [body.replace('"L"', value), body.replace('"M"', value)]:
        assert "must be a finite number" in _fields(_post_raw(client, "/v1/jobs", text, alice))


@pytest.mark.parametrize(
    "hp, field",
    [
        ({"steps": True}, "hyperparameters.steps"),
        ({"steps": 3.0}, "hyperparameters.steps"),
        ({"steps": "3"}, "hyperparameters.steps"),
        ({"learning_rate": True}, "hyperparameters.learning_rate"),
        ({"seed": 2**64}, "hyperparameters.seed"),
        ({"seed": 2**31}, "hyperparameters.seed"),
        ({"warmup_steps": 10**12}, "hyperparameters.warmup_steps"),
        ({"checkpoint_every": 10**12}, "hyperparameters.checkpoint_every"),
        ({"logprob_chunk_size": 10**12}, "hyperparameters.logprob_chunk_size"),
        ({"kl_horizon": 10**12}, "hyperparameters.kl_horizon"),
    ],
)
def test_strict_and_bounded_hyperparameters(client: TestClient, alice: dict, hp: dict, field: str) -> None:
    body = job_body(hyperparameters={"steps": 5, "prompts_per_step": 2, "group_size": 2, **hp})
    assert field in _fields(client.post("/v1/jobs", json=body, headers=alice))


def test_numbers_that_are_fine_stay_fine(client: TestClient, alice: dict) -> None:
    hp = {"steps": 5, "prompts_per_step": 2, "group_size": 2, "learning_rate": 1, "seed": 2**31 - 1}
    job = create_job(client, alice, algorithm="grpo", hyperparameters=hp)
    assert job["spec"]["hyperparameters"]["learning_rate"] == 1.0
    assert claim(client, job["id"])["spec"]["hyperparameters"]["seed"] == 2**31 - 1


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"resources": {"gpus": 0, "queue": "q" * 10_000}}, "resources.queue"),
        ({"resources": {"gpus": 0, "queue": "q" * 101}}, "resources"),
        ({"resources": {"gpus": 0, "queue": "cpu queue"}}, "resources"),
        ({"resources": {"gpus": 0, "queue": "-cpu"}}, "resources"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"a key": "v"}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"model": {"name_or_path": "m", "revision": "r" * 256}}, "model.revision"),
        ({"model": {"name_or_path": "m" * 4097}}, "model.name_or_path"),
        ({"model": {"name_or_path": "m", "lora": {"target_modules": ["q"] * 257}}}, "target_modules"),
        ({"model": {"name_or_path": "m", "lora": {"target_modules": ["q" * 201]}}}, "target_modules"),
        ({"model": {"name_or_path": "m", "lora": {"target_modules": []}}}, "target_modules"),
        ({"reward": {"url": "http://127.0.0.1:9/" + "u" * 4096}}, "reward.url"),
    ],
)
def test_counts_and_lengths_are_bounded(client: TestClient, alice: dict, overrides, field) -> None:
    assert field in _fields(client.post("/v1/jobs", json=job_body(**overrides), headers=alice))


def test_the_longest_metadata_fits_the_index(client: TestClient, alice: dict) -> None:
    # A btree index entry has a size limit on Postgres: the largest value allowed is stored and filtered.
    key, value = "k" * 64, "\U0001f600" * 512  # 4 bytes a character
    job = create_job(client, alice, metadata={key: value, "team": "search"})
    page = client.get("/v1/jobs", params={f"metadata.{key}": value}, headers=alice).json()
    assert [j["id"] for j in page["data"]] == [job["id"]]


# --- JSON depth (item 7) ---


def test_deep_json_bodies_are_4xx(client: TestClient, alice: dict) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    body = json.dumps(job_body(dataset={"rows": [{"prompt": "p", "label": "L"}]}))
    r = _post_raw(client, "/v1/jobs", body.replace('"L"', deep), alice)
    assert r.status_code == 422 and r.json()["detail"]["code"] == "json_too_deep"
    # Below the parser's recursion limit, the spec's own bound answers, naming the field.
    r = _post_raw(client, "/v1/jobs", body.replace('"L"', "[" * 200 + "]" * 200), alice)
    assert "dataset.rows[0].label" in _fields(r) and "deeper than 64 levels" in _fields(r)
    r = _post_raw(client, "/v1/rewards/validate", deep, alice)
    assert r.status_code == 422 and r.json()["detail"]["code"] == "json_too_deep"


# --- the size of a job spec, and what GET and list echo (item 8) ---


def test_a_large_inline_spec_is_413_and_points_to_files(client: TestClient, alice: dict) -> None:
    body = job_body(dataset={"rows": [{"prompt": "x" * (2 * 1024 * 1024)}]})
    r = client.post("/v1/jobs", json=body, headers=alice)
    assert r.status_code == 413, r.text
    assert r.json()["detail"]["code"] == "request_too_large"
    assert "POST /v1/files" in r.json()["detail"]["message"]
    assert "dataset.file_id" in r.json()["detail"]["message"]
    # A chunked body carries no Content-Length: it is counted as it arrives.
    chunks = iter([json.dumps(body).encode()[i : i + 65536] for i in range(0, 2_200_000, 65536)])
    r = client.post("/v1/jobs", content=chunks, headers={**alice, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"]["code"] == "request_too_large"
    assert client.get("/v1/jobs", headers=alice).json()["data"] == []


def test_the_limit_is_a_setting(settings: Settings, alice: dict) -> None:
    small = settings.model_copy(update={"max_inline_spec_bytes": 4096})
    with TestClient(create_app(small)) as c:
        assert c.post("/v1/jobs", json=job_body(), headers=alice).status_code == 201
        body = job_body(dataset={"rows": [{"prompt": "x" * 5000}]})
        assert c.post("/v1/jobs", json=body, headers=alice).status_code == 413


def test_get_and_list_show_the_count_of_inline_rows(client: TestClient, alice: dict) -> None:
    rows = [{"prompt": f"q{i} " + "x" * 500, "label": str(i)} for i in range(1000)]
    job = create_job(client, alice, dataset={"rows": rows})
    want = {"file_id": None, "path": None, "inline_rows": 1000}
    assert job["spec"]["dataset"] == want
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["spec"]["dataset"] == want
    listed = client.get("/v1/jobs", headers=alice)
    assert listed.json()["data"][0]["spec"]["dataset"] == want and len(listed.content) < 10_000
    # The worker still gets every row.
    assert claim(client, job["id"])["spec"]["dataset"]["rows"] == rows


# --- uploads (item 4): a row that would poison the claim is refused, naming the line ---


def _upload(client: TestClient, headers: dict, data: bytes) -> httpx.Response:
    return client.post("/v1/files", files={"file": ("d.jsonl", data)}, headers=headers)


@pytest.mark.parametrize(
    "line, problem",
    [
        (b'{"prompt": "p\\ud800"}', "line 2.prompt contains a lone surrogate"),
        (b'{"prompt": "p", "label": "\\udc00x"}', "line 2.label contains a lone surrogate"),
        (b'{"prompt": "p", "metadata": {"\\ud800": 1}}', "a key in line 2.metadata contains a lone"),
        (b'{"prompt": "p\\u0000"}', "line 2.prompt contains a NUL"),
        (b'{"prompt": "p", "label": Infinity}', "line 2.label must be a finite number"),
        (b'{"prompt": "p", "label": NaN}', "line 2.label must be a finite number"),
        (b'{"prompt": "p", "label": -1e999}', "line 2.label must be a finite number"),
        (b'{"prompt": "p", "label": ' + b"[" * 100 + b"]" * 100 + b"}", "deeper than 64 levels"),
        (b'{"prompt": "p", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "line 2 nests deeper"),
        (b'{"prompt": "p", "label": ' + b"9" * 5000 + b"}", "line 2 is not usable JSON"),
    ],
)
def test_uploads_refuse_rows_that_would_poison_a_claim(
    client: TestClient, alice: dict, line: bytes, problem: str
) -> None:
    r = _upload(client, alice, b'{"prompt": "fine"}\n' + line + b"\n")
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["code"] == "dataset_invalid" and problem in r.json()["detail"]["message"]


def test_upload_form_fields_are_checked(client: TestClient, alice: dict) -> None:
    # A NUL in `purpose` answered 500 on Postgres (text columns refuse it).
    line = b'{"prompt": "p"}\n'

    def upload(purpose: str) -> httpx.Response:
        files = {"file": ("d.jsonl", line)}
        return client.post("/v1/files", files=files, data={"purpose": purpose}, headers=alice)

    for purpose in ["data\x00set", "x" * 41, "data set"]:
        assert "purpose" in _fields(upload(purpose))
    # httpx writes a NUL in a file name as %00; a raw multipart body can carry the byte itself.
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n\r\n'
        ).encode()
        + line
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post(
        "/v1/files",
        content=body,
        headers={**alice, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "file name contains a NUL" in _fields(r)
    r = upload("eval-set_2")
    assert r.status_code == 201 and r.json()["purpose"] == "eval-set_2"


def test_an_uploaded_dataset_with_unicode_is_claimable(client: TestClient, alice: dict) -> None:
    # Paired surrogates (an emoji written as an escape) are valid text and go all the way to the worker.
    f = _upload(client, alice, b'{"prompt": "smile \\ud83d\\ude00", "label": "\xc3\xa9"}\n').json()
    job = create_job(client, alice, dataset={"file_id": f["id"]})
    assert claim(client, job["id"])["job_id"] == job["id"]


# --- SSE Last-Event-ID (item 7) ---


def _finished_job(client: TestClient, alice: dict) -> tuple[str, list[int]]:
    jid = create_job(client, alice)["id"]
    fence = claim(client, jid)["fence"]
    events = [{"message": f"m{i}"} for i in range(3)]
    assert wpost(client, jid, "events", fence=fence, events=events).status_code == 200
    assert wpost(client, jid, "finish", fence=fence, status="succeeded").status_code == 200
    ids = [e["id"] for e in client.get(f"/v1/jobs/{jid}/events", headers=alice).json()["data"]]
    return jid, ids


@pytest.mark.parametrize("value", ["1" * 29, str(2**62 + 1), "-1", "12a", " 12", "\u0661\u0662"])
def test_a_malformed_last_event_id_is_422(client: TestClient, alice: dict, value: str) -> None:
    jid, _ = _finished_job(client, alice)
    r = client.get(f"/v1/jobs/{jid}/events/stream", headers={**alice, "Last-Event-ID": value.encode()})
    assert "last-event-id" in _fields(r).lower()


def test_a_valid_last_event_id_resumes_the_stream(settings: Settings, alice: dict) -> None:
    with ServerThread(create_app(settings)) as srv, httpx.Client(base_url=srv.url, headers=alice) as http:
        client: Any = http
        jid = client.post("/v1/jobs", json=job_body()).json()["id"]
        fence = client.post(f"/internal/v1/jobs/{jid}/claim", json={"worker_id": "w"}, headers=WORKER).json()
        client.post(
            f"/internal/v1/jobs/{jid}/events",
            json={"fence": fence["fence"], "events": [{"message": f"m{i}"} for i in range(3)]},
            headers=WORKER,
        ).raise_for_status()
        client.post(
            f"/internal/v1/jobs/{jid}/finish",
            json={"fence": fence["fence"], "status": "succeeded"},
            headers=WORKER,
        ).raise_for_status()
        ids = [e["id"] for e in client.get(f"/v1/jobs/{jid}/events").json()["data"]]
        with client.stream(
            "GET", f"/v1/jobs/{jid}/events/stream", headers={"Last-Event-ID": str(ids[1])}, timeout=30
        ) as r:
            got = [int(line[4:]) for line in r.iter_lines() if line.startswith("id: ")]
        assert r.status_code == 200 and got == ids[2:]
        # 2**62 is the largest id a client may send: nothing after it, and the stream ends on its own.
        with client.stream(
            "GET", f"/v1/jobs/{jid}/events/stream", headers={"Last-Event-ID": str(2**62)}, timeout=30
        ) as r:
            assert r.status_code == 200 and [ln for ln in r.iter_lines() if ln.startswith("id: ")] == []


# --- a property run over row values: whatever JSON a row carries, the answer is 201 or 422 ---

_TEXT = st.text(st.characters(codec=None, categories=["L", "N", "P", "S", "Z", "C"]), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)


def test_any_row_value_is_stored_or_refused_never_500(client: TestClient, alice: dict) -> None:
    codes: Counter[int] = Counter()

    @given(label=_JSON, metadata=st.dictionaries(_TEXT, _JSON, max_size=3), prompt=_TEXT)
    @hypothesis_settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def check(label: Any, metadata: dict, prompt: str) -> None:
        row = {"prompt": prompt or "p", "label": label, "metadata": metadata}
        # allow_nan: a hostile client's NaN/Infinity tokens, which Python's json accepts.
        text = json.dumps(job_body(dataset={"rows": [row]}), allow_nan=True)
        r = _post_raw(client, "/v1/jobs", text, alice)
        codes[r.status_code] += 1
        assert r.status_code in (201, 422), r.text[:300]
        if r.status_code == 201:
            got = client.get(f"/v1/jobs/{r.json()['id']}", headers=alice)
            assert got.status_code == 200

    check()
    assert codes[201] > 0 and codes[422] > 0, codes
