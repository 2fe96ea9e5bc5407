"""API keys can be listed, revoked and rotated; a revoked key answers 401 from the next request on."""

from __future__ import annotations

import pytest

from service.keys import KeyNotFound, create_api_key, list_keys, revoke_key, rotate_key


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_list_shows_ids_tenants_and_prefixes_never_the_keys(settings):
    a1 = create_api_key(settings, "alice")
    create_api_key(settings, "bob")
    a2 = create_api_key(settings, "alice")
    keys = list_keys(settings)
    assert [k.tenant for k in keys] == ["alice", "bob", "alice"]
    assert [k.prefix for k in keys if k.tenant == "alice"] == [a1[:12], a2[:12]]
    assert all(k.id.startswith("key_") and k.revoked_at is None for k in keys)
    shown = repr(keys)
    assert a1 not in shown and a2 not in shown
    assert [k.tenant for k in list_keys(settings, "bob")] == ["bob"]
    assert list_keys(settings, "nobody") == []


def test_a_revoked_key_is_refused_and_the_tenants_other_keys_still_work(client, settings):
    old, other = create_api_key(settings, "alice"), create_api_key(settings, "alice")
    assert client.get("/v1/jobs", headers=_auth(old)).status_code == 200
    key_id = next(k.id for k in list_keys(settings) if k.prefix == old[:12])
    info = revoke_key(settings, key_id)
    assert info.revoked_at is not None and info.tenant == "alice"
    r = client.get("/v1/jobs", headers=_auth(old))
    assert r.status_code == 401 and r.json()["detail"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers=_auth(other)).status_code == 200
    # Revoking again changes nothing (the first revocation time stays).
    assert revoke_key(settings, key_id).revoked_at == info.revoked_at


def test_rotate_gives_the_same_tenant_a_new_key_and_revokes_the_old(client, settings, alice):
    old = alice["Authorization"].split()[1]
    created = client.post("/v1/files", files={"file": ("d.jsonl", b'{"prompt": "hi"}\n')}, headers=alice)
    assert created.status_code == 201
    key_id = next(k.id for k in list_keys(settings, "alice"))
    new, info = rotate_key(settings, key_id)
    assert new != old and info.id == key_id and info.revoked_at is not None
    assert client.get("/v1/jobs", headers=_auth(old)).status_code == 401
    # The new key is the same tenant: it sees the file the old key uploaded.
    r = client.get(f"/v1/files/{created.json()['id']}", headers=_auth(new))
    assert r.status_code == 200


def test_an_unknown_key_id_says_where_to_find_ids(settings):
    with pytest.raises(KeyNotFound, match="rlft keys list"):
        revoke_key(settings, "key_nope")
    with pytest.raises(KeyNotFound):
        rotate_key(settings, "key_nope")
    assert list_keys(settings) == []  # a failed rotation created nothing
