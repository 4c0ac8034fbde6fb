"""The collections API against a real server: manage, ingest, list, search, delete."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from trellis.retrieval import SQLiteIndex
from trellis.settings import Settings
from trellis.store import Database
from trellis.testing.server import ServerThread

DOCS = [
    {
        "id": "otters",
        "text": "Sea otters use stones as tools to crack open shellfish.",
        "metadata": {"topic": "animals"},
    },
    {
        "id": "kelp",
        "text": "Kelp forests grow quickly in cold, nutrient-rich coastal water.",
        "metadata": {"topic": "plants"},
    },
    {
        "text": "The harbour seal rests on rocks and sandbars at low tide.",
        "metadata": {"topic": "animals"},
        "source": "seals.txt",
    },
]


def error(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def key(client: httpx.Client, *scopes: str) -> dict[str, str]:
    response = client.post("/v1/keys", json={"name": "k", "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def test_collection_lifecycle(client: httpx.Client) -> None:
    created = client.post("/v1/collections", json={"name": "docs", "metadata": {"team": "a"}})
    assert created.status_code == 201, created.text
    assert created.json()["embedder"] == {"name": "all-minilm-l6-v2", "dimension": 384}
    assert error(client.post("/v1/collections", json={"name": "docs"}), 400)["code"] == (
        "collection_exists"
    )
    assert error(client.post("/v1/collections", json={"name": "bad name!"}), 400)["param"]

    report = client.post("/v1/collections/docs/documents", json={"documents": DOCS})
    assert report.status_code == 200, report.text
    body = report.json()
    assert sorted(body["added"])[1:] == ["kelp", "otters"] and body["chunks"] == 3
    generated = next(i for i in body["added"] if i.startswith("doc-"))
    # Posting the same documents again changes nothing (content hashes).
    again = client.post("/v1/collections/docs/documents", json={"documents": DOCS}).json()
    assert sorted(again["unchanged"]) == sorted(body["added"]) and again["added"] == []
    changed = [{**DOCS[0], "text": DOCS[0]["text"] + " They float on their backs."}]
    assert client.post("/v1/collections/docs/documents", json={"documents": changed}).json()[
        "replaced"
    ] == ["otters"]

    info = client.get("/v1/collections/docs").json()
    assert (info["documents"], info["chunks"], info["metadata"]) == (3, 3, {"team": "a"})
    assert [c["name"] for c in client.get("/v1/collections").json()["data"]] == ["docs"]

    first = client.get("/v1/collections/docs/documents", params={"limit": 2}).json()
    assert first["has_more"] and first["next_offset"] == 2 and len(first["data"]) == 2
    rest = client.get("/v1/collections/docs/documents", params={"offset": 2}).json()
    assert not rest["has_more"] and len(rest["data"]) == 1
    listed = {d["id"]: d for d in first["data"] + rest["data"]}
    assert listed[generated]["source"] == "seals.txt"

    for mode in ("keyword", "vector", "hybrid"):
        hits = client.post(
            "/v1/collections/docs/search", json={"query": "otters with tools", "mode": mode}
        ).json()["data"]
        assert hits[0]["document_id"] == "otters", mode
        assert hits[0]["chunk_id"] and hits[0]["end"] > hits[0]["start"] == 0
    hybrid = client.post(
        "/v1/collections/docs/search",
        json={
            "query": "animals on rocks",
            "top_k": 1,
            "filters": {"topic": "animals"},
            "fusion": {"method": "weighted", "weights": [0.3, 0.7]},
        },
    ).json()["data"]
    assert len(hybrid) == 1 and hybrid[0]["metadata"]["topic"] == "animals"
    assert set(hybrid[0]["scores"]) >= {"vector", "hybrid"}
    high = client.post(
        "/v1/collections/docs/search", json={"query": "otters", "mode": "vector", "min_score": 0.99}
    )
    assert high.json()["data"] == []

    reindexed = client.post("/v1/collections/docs/reindex")
    assert reindexed.status_code == 200, reindexed.text
    assert sorted(reindexed.json()["reindexed"]["replaced"]) == sorted(body["added"])
    assert (reindexed.json()["documents"], reindexed.json()["metadata"]) == (3, {"team": "a"})
    assert [c["name"] for c in client.get("/v1/collections").json()["data"]] == ["docs"]
    again_hits = client.post("/v1/collections/docs/search", json={"query": "otters"}).json()
    assert again_hits["data"][0]["document_id"] == "otters"
    assert error(client.post("/v1/collections/nope/reindex"), 404)["code"] == "not_found"

    deleted = client.delete("/v1/collections/docs/documents/otters")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert error(client.delete("/v1/collections/docs/documents/otters"), 404)["code"] == (
        "not_found"
    )
    assert client.get("/v1/collections/docs").json()["documents"] == 2
    # Ids of ingested files are paths: they may hold slashes.
    nested = {"documents": [{"id": "/notes/a.md", "text": "A note about slashes."}]}
    assert client.post("/v1/collections/docs/documents", json=nested).json()["added"]
    assert client.delete("/v1/collections/docs/documents//notes/a.md").status_code == 200
    assert client.get("/v1/collections/docs").json()["documents"] == 2
    assert client.delete("/v1/collections/docs").json()["deleted"] is True
    assert error(client.get("/v1/collections/docs"), 404)["code"] == "not_found"


def test_validation_and_not_found(client: httpx.Client) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    for path in ("/v1/collections/nope", "/v1/collections/nope/documents"):
        assert error(client.get(path), 404)["code"] == "not_found"
    assert error(client.delete("/v1/collections/nope"), 404)
    assert error(client.post("/v1/collections/nope/search", json={"query": "x"}), 404)
    missing = client.post("/v1/collections/nope/documents", json={"documents": [{"text": "x"}]})
    assert error(missing, 404)
    bad = [
        ({"query": ""}, "query"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "filters": {"a": [1]}}, "filters"),
        ({"query": "x", "filters": {"bad key": 1}}, "filters"),
        ({"query": "x", "fusion": {"weights": [0, 0]}}, None),
        ({"query": "x", "surprise": 1}, "surprise"),
    ]
    for body, param in bad:
        failure = error(client.post("/v1/collections/docs/search", json=body), 400)
        if param:
            assert param in (failure["param"] or ""), (body, failure)
    for docs in ([], [{"id": "a"}], [{"text": "x", "metadata": "no"}]):
        error(client.post("/v1/collections/docs/documents", json={"documents": docs}), 400)


def test_a_document_offset_past_64_bits_is_a_400(client: httpx.Client) -> None:
    # Found by verification: SQLite's OFFSET is a signed 64-bit integer, and
    # ?offset=99999999999999999999 answered 500 (OverflowError) instead of a 400.
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    for offset in (2**63, 10**20):
        failure = error(
            client.get("/v1/collections/docs/documents", params={"offset": offset}), 400
        )
        assert "offset" in (failure["param"] or "")
    page = client.get("/v1/collections/docs/documents", params={"offset": 2**63 - 1})
    assert page.status_code == 200 and page.json()["data"] == []


def test_scopes(client: httpx.Client) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    inference = key(client, "inference")
    observer = key(client, "observer")
    url = "/v1/collections/docs"
    assert client.get(url, headers=inference).status_code == 200
    search = client.post(f"{url}/search", json={"query": "x"}, headers=inference)
    assert search.status_code == 200 and search.json()["data"] == []
    assert error(client.get(url, headers=observer), 403)["code"] == "insufficient_scope"
    for response in (
        client.post("/v1/collections", json={"name": "more"}, headers=inference),
        client.post(f"{url}/documents", json={"documents": [{"text": "x"}]}, headers=inference),
        client.delete(f"{url}/documents/x", headers=inference),
        client.delete(url, headers=inference),
        client.post(f"{url}/reindex", headers=inference),
    ):
        assert error(response, 403)["code"] == "insufficient_scope"
    assert error(httpx.get(client.base_url.join(url)), 401)


def test_embedder_dimension_mismatch(
    make_server: Callable[[Settings], ServerThread],
    make_settings: Callable[..., Settings],
    admin_key: str,
) -> None:
    settings = make_settings()

    async def foreign_collection() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        await db.connect()
        try:
            await SQLiteIndex(db).create_collection("old", "some-other-embedder", 768)
        finally:
            await db.close()

    asyncio.run(foreign_collection())
    server = make_server(settings)
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    ) as http:
        assert http.get("/v1/collections/old").json()["embedder"]["dimension"] == 768
        for response in (
            http.post("/v1/collections/old/search", json={"query": "x"}),
            http.post("/v1/collections/old/documents", json={"documents": [{"text": "x"}]}),
        ):
            failure = error(response, 400)
            assert failure["code"] == "embedder_mismatch"
            assert "768" in failure["message"] and "re-index" in failure["message"]


def test_a_query_longer_than_the_embedder_window_is_searched(client: httpx.Client) -> None:
    """Such a query (CISI-style information needs run to ~380 word pieces) was a 400."""
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    client.post("/v1/collections/docs/documents", json={"documents": DOCS})
    query = "Please find me something worth reading about the sea. " * 30 + "Otters and tools?"
    for mode in ("vector", "hybrid"):
        response = client.post("/v1/collections/docs/search", json={"query": query, "mode": mode})
        assert response.status_code == 200, response.text
        assert response.json()["data"], mode
    too_long = client.post("/v1/collections/docs/search", json={"query": "sea " * 3000})
    assert error(too_long, 400)["code"] == "query_too_long"
