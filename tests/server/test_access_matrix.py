"""Every endpoint × every role × own/other project, through a real server.

The endpoints come from the app itself (its OpenAPI paths, which list every route of every
router): an endpoint with no entry in ``POLICY`` fails the test, so a new route cannot ship
without a decided access policy. For each role the expected status follows the table in
docs/api.md: 403 without the role, 404 for another project's resource (never 403: its
existence is not given away), 2xx for the key's own project. List answers are checked not
to contain another project's ids.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from trellis.server.app import create_app
from trellis.testing.fake_upstream import FakeUpstream
from trellis.testing.server import ServerThread

from .conftest import ADMIN_KEY, gateway_settings

FLOWS = Path(__file__).resolve().parent.parent / "flows"
ROLES = ("admin", "inference", "observer", "ingest", "eval")
A, I, O, G, E = ROLES  # noqa: E741
CONTENT = '{"id": "c1", "input": "hi", "expected": "Hello from the fake upstream"}\n'
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def ok(response: httpx.Response, *statuses: int) -> Any:
    assert response.status_code in (statuses or (200, 201)), (
        response.request.method,
        response.request.url,
        response.text,
    )
    return response.json()


@dataclass
class Project:
    """One project's keys (a client per role) and resources."""

    id: str
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)


class World:
    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.root = self.client(ADMIN_KEY)
        self.projects: dict[str, Project] = {}

    def client(self, secret: str, project: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {secret}"}
        if project:
            headers["X-Trellis-Project"] = project
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=60)

    def key(self, project: str, *roles: str) -> str:
        body = {"name": "-".join(roles), "scopes": list(roles), "project": project}
        return ok(self.root.post("/v1/keys", json=body), 201)["key"]  # type: ignore[no-any-return]

    def add_project(self, project_id: str) -> Project:
        ok(self.root.post("/v1/projects", json={"id": project_id}), 201)
        project = Project(project_id)
        for role in ROLES:
            project.clients[role] = self.client(self.key(project_id, role))
        self.projects[project_id] = project
        return project

    def close(self) -> None:
        self.root.close()
        for project in self.projects.values():
            for http in project.clients.values():
                http.close()


def suite_file(tmp_path: Path) -> Path:
    """The suite of the operator's schedule (a dataset file next to it)."""
    (tmp_path / "nightly.jsonl").write_text(CONTENT)
    path = tmp_path / "nightly.yaml"
    path.write_text(
        "name: nightly\ndataset: nightly.jsonl\nmetrics: [exact]\n"
        "candidates: [{name: a, model: gpt-test, prompt: 'Say: {input}'}]\n"
    )
    return path


# --- resources, made for the project (and the acting key where ownership is per key) -----


def collection(world: World, project: Project, actor: httpx.Client | None) -> str:
    name = unique(f"docs-{project.id}")
    admin = project.clients[A]
    ok(admin.post("/v1/collections", json={"name": name}), 201)
    documents = [{"id": "d1", "text": "Trellis keeps projects apart."}]
    ok(admin.post(f"/v1/collections/{name}/documents", json={"documents": documents}))
    return name


def chat(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], **extra}
    return http.post("/v1/chat/completions", json=body)


def trace(world: World, project: Project, actor: httpx.Client | None) -> str:
    return project.ids["trace"]


def rule(world: World, project: Project, actor: httpx.Client | None) -> str:
    body = {"name": unique(f"rule-{project.id}"), "kind": "error_rate", "threshold": 0.5}
    return ok(project.clients[A].post("/v1/alerts/rules", json=body), 201)["id"]  # type: ignore[no-any-return]


def key(world: World, project: Project, actor: httpx.Client | None) -> str:
    body = {"name": "victim", "scopes": ["inference"], "project": project.id}
    return ok(world.root.post("/v1/keys", json=body), 201)["id"]  # type: ignore[no-any-return]


def memory(world: World, project: Project, actor: httpx.Client | None) -> str:
    http = actor or project.clients[I]
    body = {"user": "u1", "text": unique("likes tea")}
    return ok(http.post("/v1/memories", json=body), 200, 201)["id"]  # type: ignore[no-any-return]


def session(world: World, project: Project, actor: httpx.Client | None) -> str:
    http = actor or project.clients[I]
    name = unique("s")
    ok(chat(http, trellis={"session_id": name}))
    return name


def waiting_run(world: World, project: Project, actor: httpx.Client | None) -> str:
    http = actor or project.clients[I]
    body = {"input": {"text": "a text long enough to wait"}}
    run = ok(http.post("/v1/workflows/review/runs", json=body))
    assert run["status"] == "waiting", run
    return run["id"]  # type: ignore[no-any-return]


def workflow_run(world: World, project: Project, actor: httpx.Client | None) -> str:
    return project.ids["run"]


def eval_run(world: World, project: Project, actor: httpx.Client | None) -> str:
    if actor is None or actor is project.clients[I]:
        return project.ids["eval_run"]
    return finished_eval(actor, project.ids["dataset"])


def finished_eval(http: httpx.Client, dataset: str) -> str:
    suite = {
        "name": "m",
        "dataset": dataset,
        "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
        "metrics": ["exact"],
    }
    run_id: str = ok(http.post("/v1/evals/runs", json={"suite": suite}))["id"]
    deadline = time.monotonic() + 30
    while ok(http.get(f"/v1/evals/runs/{run_id}"))["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return run_id


def queue(world: World, project: Project, actor: httpx.Client | None) -> str:
    """The project's labelling queue (made by its inference key from its eval run)."""
    return project.ids["queue"]


def labelled_queue(world: World, project: Project, actor: httpx.Client | None) -> str:
    queue_id = project.ids["queue"]
    label = {"score": 5}
    ok(project.clients[E].post(f"/v1/evals/queues/{queue_id}/items/1/label", json=label))
    return queue_id


def key_subject(world: World, project: Project, actor: httpx.Client | None) -> str:
    return f"key:{key(world, project, actor)}"


def limited_key(world: World, project: Project, actor: httpx.Client | None) -> str:
    body = {"name": "limited", "project": project.id, "limits": {"rpm": 100000}}
    return f"key:{ok(world.root.post('/v1/keys', json=body), 201)['id']}"


Factory = Callable[[World, Project, "httpx.Client | None"], str]


@dataclass(frozen=True)
class Policy:
    roles: tuple[str, ...]
    #: Makes the resource named in the path (``{}`` in ``path``); None: nothing to own.
    resource: Factory | None = None
    body: Callable[[Project, Project, str], Any] | None = None
    query: str = ""
    #: The status of an allowed call in the caller's own project.
    status: int = 200
    #: The resource must belong to the acting key (memories, sessions, its own runs).
    per_key: bool = False
    #: Only the built-in admin may call it: a project's admin gets 403.
    global_admin: bool = False
    #: Open: no key needed (health, metrics).
    open: bool = False
    #: The operator's (scheduled evals, in the default project): keys of other projects
    #: get an empty list or 404.
    operator: bool = False


def _suite_body(own: Project, target: Project, role: str) -> dict[str, Any]:
    return {
        "suite": {
            "name": "m",
            "dataset": target.ids["dataset"],
            "candidates": [{"name": "a", "model": "gpt-test", "prompt": "Say: {input}"}],
            "metrics": ["exact"],
        }
    }


POLICY: dict[tuple[str, str], Policy] = {
    ("GET", "/healthz"): Policy(ROLES, open=True),
    ("GET", "/readyz"): Policy(ROLES, open=True),
    ("GET", "/metrics"): Policy(ROLES, open=True),
    ("POST", "/v1/chat/completions"): Policy(
        (I,),
        body=lambda o, t, r: {"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]},
    ),
    ("POST", "/v1/embeddings"): Policy(
        (I,), body=lambda o, t, r: {"model": "embed-test", "input": "x"}
    ),
    ("POST", "/v1/guard/check"): Policy(
        (I,), body=lambda o, t, r: {"text": "What is the capital of France?"}
    ),
    ("GET", "/v1/models"): Policy((I,)),
    ("GET", "/v1/models/{model_id}"): Policy((I,), resource=lambda w, p, a: "gpt-test"),
    ("GET", "/v1/keys"): Policy((A,)),
    ("POST", "/v1/keys"): Policy(
        (A,), body=lambda o, t, r: {"name": "new", "project": t.id}, status=201
    ),
    ("PATCH", "/v1/keys/{key_id}"): Policy(
        (A,), resource=key, body=lambda o, t, r: {"scopes": ["observer"]}
    ),
    ("DELETE", "/v1/keys/{key_id}"): Policy((A,), resource=key),
    ("POST", "/v1/keys/{key_id}/rotate"): Policy(
        (A,), resource=key, body=lambda o, t, r: {"grace": "1h"}
    ),
    ("GET", "/v1/traces"): Policy((O,)),
    ("GET", "/v1/traces/{trace_id}"): Policy((O,), resource=trace),
    ("POST", "/v1/traces/{trace_id}/scores"): Policy(
        (O, I), resource=trace, body=lambda o, t, r: {"name": "good", "value": 1.0}, status=201
    ),
    ("GET", "/v1/stats"): Policy((O,)),
    ("GET", "/v1/collections"): Policy((I, G)),
    ("POST", "/v1/collections"): Policy(
        (A,), body=lambda o, t, r: {"name": unique("made")}, status=201
    ),
    ("GET", "/v1/collections/{name}"): Policy((I, G), resource=collection),
    ("DELETE", "/v1/collections/{name}"): Policy((A,), resource=collection),
    ("POST", "/v1/collections/{name}/reindex"): Policy((A,), resource=collection),
    ("GET", "/v1/collections/{name}/documents"): Policy((I, G), resource=collection),
    ("POST", "/v1/collections/{name}/documents"): Policy(
        (G,), resource=collection, body=lambda o, t, r: {"documents": [{"text": "more"}]}
    ),
    ("DELETE", "/v1/collections/{name}/documents/{doc_id}"): Policy(
        (G,), resource=lambda w, p, a: collection(w, p, a) + "/documents/d1"
    ),
    ("POST", "/v1/collections/{name}/search"): Policy(
        (I, G), resource=collection, body=lambda o, t, r: {"query": "projects"}
    ),
    ("GET", "/v1/alerts"): Policy((O,)),
    ("GET", "/v1/alerts/rules"): Policy((O,)),
    ("POST", "/v1/alerts/rules"): Policy(
        (A,),
        body=lambda o, t, r: {"name": unique("r"), "kind": "error_rate", "threshold": 0.5},
        status=201,
    ),
    ("DELETE", "/v1/alerts/rules/{rule_id}"): Policy((A,), resource=rule),
    ("GET", "/v1/memories"): Policy((I,)),
    ("POST", "/v1/memories"): Policy(
        (I,), body=lambda o, t, r: {"user": "u2", "text": unique("likes coffee")}, status=201
    ),
    ("DELETE", "/v1/memories"): Policy((I,), query="?user=u9"),
    ("GET", "/v1/memories/{memory_id}"): Policy((I,), resource=memory, per_key=True),
    ("PATCH", "/v1/memories/{memory_id}"): Policy(
        (I,), resource=memory, per_key=True, body=lambda o, t, r: {"text": unique("tea")}
    ),
    ("DELETE", "/v1/memories/{memory_id}"): Policy((I,), resource=memory, per_key=True),
    ("GET", "/v1/sessions/{session_id}"): Policy((I,), resource=session, per_key=True),
    ("DELETE", "/v1/sessions/{session_id}"): Policy((I,), resource=session, per_key=True),
    ("GET", "/v1/workflows"): Policy((I, O)),
    ("POST", "/v1/workflows/{name}/runs"): Policy(
        (I,), resource=lambda w, p, a: "review", body=lambda o, t, r: {"input": {"text": "hi"}}
    ),
    ("GET", "/v1/runs"): Policy((I, O)),
    ("GET", "/v1/runs/{run_id}"): Policy((I, O), resource=workflow_run),
    ("POST", "/v1/runs/{run_id}/resume"): Policy(
        (I,), resource=waiting_run, per_key=True, body=lambda o, t, r: {"input": True}
    ),
    ("POST", "/v1/runs/{run_id}/cancel"): Policy((I,), resource=waiting_run, per_key=True),
    ("GET", "/v1/evals/datasets"): Policy((E, I, O)),
    ("POST", "/v1/evals/datasets"): Policy(
        (E, I), body=lambda o, t, r: {"name": unique("ds"), "content": CONTENT}
    ),
    ("POST", "/v1/evals/runs"): Policy((E, I), body=_suite_body, status=200),
    ("GET", "/v1/evals/runs"): Policy((E, I, O)),
    ("GET", "/v1/evals/runs/{run_id}"): Policy((E, I, O), resource=eval_run),
    ("GET", "/v1/evals/runs/{run_id}/report.html"): Policy((E, I, O), resource=eval_run),
    ("POST", "/v1/evals/runs/{run_id}/resume"): Policy((E, I), resource=eval_run, per_key=True),
    ("POST", "/v1/evals/compare"): Policy(
        (E, I, O),
        body=lambda o, t, r: {"baseline": t.ids["eval_run"], "candidate": t.ids["eval_run"]},
    ),
    ("GET", "/v1/projects"): Policy((A,), global_admin=True),
    ("POST", "/v1/projects"): Policy(
        (A,), global_admin=True, body=lambda o, t, r: {"id": unique("p")}, status=201
    ),
    ("PATCH", "/v1/projects/{project_id}"): Policy(
        (A,),
        global_admin=True,
        resource=lambda w, p, a: p.id,
        body=lambda o, t, r: {"guard": {"input": {"mode": "off"}}},
    ),
    ("DELETE", "/v1/projects/{project_id}"): Policy(
        (A,), global_admin=True, resource=lambda w, p, a: p.id
    ),
    ("GET", "/v1/audit"): Policy((A,)),
    ("GET", "/v1/limits"): Policy((A,)),
    ("PUT", "/v1/limits/{subject}"): Policy(
        (A,), resource=key_subject, body=lambda o, t, r: {"rpm": 100000}
    ),
    ("GET", "/v1/limits/{subject}"): Policy((A,), resource=limited_key),
    ("DELETE", "/v1/limits/{subject}"): Policy((A,), resource=limited_key),
    ("GET", "/v1/usage/{subject}"): Policy((I, O), resource=lambda w, p, a: f"project:{p.id}"),
    ("GET", "/v1/evals/queues"): Policy((E, I, O)),
    ("POST", "/v1/evals/queues"): Policy(
        (E, I, O), body=lambda o, t, r: {"run_id": t.ids["eval_run"]}
    ),
    ("GET", "/v1/evals/queues/{queue_id}"): Policy((E, I, O), resource=queue),
    ("GET", "/v1/evals/queues/{queue_id}/next"): Policy((E, I, O), resource=queue),
    ("GET", "/v1/evals/queues/{queue_id}/items"): Policy((E, I, O), resource=queue),
    ("GET", "/v1/evals/queues/{queue_id}/agreement"): Policy((E, I, O), resource=queue),
    ("POST", "/v1/evals/queues/{queue_id}/items/{item_id}/label"): Policy(
        (E, I, O),
        resource=lambda w, p, a: queue(w, p, a) + "/items/1",
        body=lambda o, t, r: {"score": 4},
    ),
    ("POST", "/v1/evals/queues/{queue_id}/export"): Policy(
        (E, I), resource=labelled_queue, body=lambda o, t, r: {"dataset": unique("labelled")}
    ),
    ("GET", "/v1/evals/schedules"): Policy((E, O), operator=True),
    ("POST", "/v1/evals/schedules/{name}/run"): Policy(
        (A,), resource=lambda w, p, a: "nightly", operator=True
    ),
    ("GET", "/v1/evals/schedules/{name}/runs"): Policy(
        (E, O), resource=lambda w, p, a: "nightly", operator=True
    ),
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.syspath_prepend(str(FLOWS))
    with FakeUpstream(vendor="openai") as upstream:
        upstream.reply = "Hello from the fake upstream"
        # Cached answers shared by a project's keys (not per key): still never across projects.
        settings = gateway_settings(
            tmp_path,
            upstream,
            workflows=["api_flows:review"],
            cache={"per_key": False},
            evals={
                "schedules": [
                    {"name": "nightly", "suite": str(suite_file(tmp_path)), "cron": "0 2 * * *"}
                ]
            },
        )
        server = ServerThread(create_app(settings)).start()
        world = World(server)
        try:
            for name in ("alpha", "beta"):
                project = world.add_project(name)
                inference = project.clients[I]
                project.ids["trace"] = chat(inference).headers["x-trellis-trace-id"]
                project.ids["run"] = ok(
                    inference.post("/v1/workflows/review/runs", json={"input": {"text": "hi"}})
                )["id"]
                dataset = f"qa-{name}"
                ok(inference.post("/v1/evals/datasets", json={"name": dataset, "content": CONTENT}))
                project.ids["dataset"] = dataset
                project.ids["eval_run"] = finished_eval(inference, dataset)
                project.ids["collection"] = collection(world, project, None)
                made = inference.post("/v1/evals/queues", json={"run_id": project.ids["eval_run"]})
                project.ids["queue"] = ok(made)["id"]
                project.ids["limited_key"] = limited_key(world, project, None)
                limits = {"rpm": 100000}
                ok(world.root.put(f"/v1/limits/project:{name}", json=limits))
                project.ids["project_limit"] = f"project:{name}"
            deadline = time.monotonic() + 10
            for project in world.projects.values():  # the trace writer flushes every 50 ms
                while world.root.get(f"/v1/traces/{project.ids['trace']}").status_code == 404:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            yield world
        finally:
            world.close()
            server.stop()


def _expected(policy: Policy, role: str, own: bool) -> int:
    if policy.open:
        return 200
    if role != A and role not in policy.roles:
        return 403
    if policy.global_admin:
        return 403  # a project's admin key does not manage projects
    if policy.operator:
        return 404 if policy.resource is not None else policy.status
    if policy.resource is None and policy.body is None:
        return policy.status
    return policy.status if own else 404


def test_every_endpoint_has_a_policy(world: World) -> None:
    paths = world.root.get("/openapi.json").json()["paths"]
    routes = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert routes == set(POLICY), (
        f"without a policy: {sorted(routes - set(POLICY))}; "
        f"no such route: {sorted(set(POLICY) - routes)}"
    )


def _target_is_shared(policy: Policy, method: str, path: str) -> bool:
    """Resources every project shares (models, registered workflows): no other project's."""
    return (
        policy.operator
        or path in ("/v1/models/{model_id}", "/v1/workflows/{name}/runs")
        or (
            policy.resource is None
            and policy.body is not None
            and method == "POST"
            and path not in ("/v1/keys", "/v1/evals/runs", "/v1/evals/compare", "/v1/evals/queues")
        )
    )


def test_access_matrix(world: World) -> None:
    own, other = world.projects["alpha"], world.projects["beta"]
    failures: list[str] = []
    calls = 0
    for (method, path), policy in sorted(POLICY.items()):
        shared = _target_is_shared(policy, method, path)
        for role in ROLES:
            actor = own.clients[role]
            for target_own in (True, False) if not shared else (True,):
                target = own if target_own else other
                expected = _expected(policy, role, target_own)
                url = path
                if policy.resource is not None and expected == 403:
                    # The role check comes first: no resource needed (numbers where ids are).
                    url = re.sub(r"\{(\w+)\}", lambda m: "1" if m[1] == "item_id" else "x", path)
                elif policy.resource is not None:
                    value = policy.resource(
                        world, target, actor if policy.per_key and target_own else None
                    )
                    # The factory names every id up to the last one; the rest is the path's.
                    url = path.split("{")[0] + value
                    if "}/" in path and not path.endswith("/documents/{doc_id}"):
                        url += "/" + path.rsplit("}/", 1)[1]
                url += policy.query
                body = policy.body(own, target, role) if policy.body is not None else None
                response = actor.request(method, url, json=body)
                calls += 1
                if response.status_code != expected:
                    failures.append(
                        f"{role} {method} {url} ({'own' if target_own else 'other'}): "
                        f"{response.status_code} != {expected}: {response.text[:200]}"
                    )
                elif (
                    method == "GET"
                    and policy.resource is None
                    and expected == 200
                    and not policy.open
                ):
                    leaked = [v for v in other.ids.values() if v in response.text]
                    if leaked:
                        failures.append(f"{role} {method} {url} lists beta's {leaked}")
    assert not failures, f"{len(failures)} of {calls} calls:\n" + "\n".join(failures)
    assert calls > 400


def test_the_built_in_admin_spans_projects_or_acts_in_one(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    everything = ok(world.root.get("/v1/traces"))["data"]
    assert {alpha.ids["trace"], beta.ids["trace"]} <= {t["id"] for t in everything}
    in_beta = world.client(ADMIN_KEY, "beta")
    seen = {c["name"] for c in ok(in_beta.get("/v1/collections"))["data"]}
    assert beta.ids["collection"] in seen and alpha.ids["collection"] not in seen
    made = ok(in_beta.post("/v1/collections", json={"name": "made-by-root"}), 201)
    assert made["project"] == "beta"
    assert in_beta.get(f"/v1/traces/{alpha.ids['trace']}").status_code == 404
    assert ok(world.root.get("/v1/traces?project=alpha"))["data"][0]["project_id"] == "alpha"
    unknown = world.client(ADMIN_KEY, "nowhere").get("/v1/traces")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "project_not_found"
    # A project's key naming another project is answered as if it did not exist.
    assert (
        alpha.clients[O].get("/v1/traces", headers={"X-Trellis-Project": "beta"}).status_code == 404
    )
    in_beta.close()


def test_a_project_with_resources_is_not_deleted(world: World) -> None:
    busy = world.root.delete("/v1/projects/alpha")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "project_not_empty"
    ok(world.root.post("/v1/projects", json={"id": "empty"}), 201)
    ok(world.root.delete("/v1/projects/empty"))
    assert world.root.delete("/v1/projects/empty").status_code == 404
    assert world.root.delete("/v1/projects/default").status_code == 409
    names = [p["id"] for p in ok(world.root.get("/v1/projects"))["data"]]
    assert names == ["alpha", "beta", "default"]


def test_administrative_actions_are_audited_per_project(world: World) -> None:
    alpha = world.projects["alpha"]
    admin = alpha.clients[A]
    made = ok(admin.post("/v1/keys", json={"name": "audited"}, headers={"User-Agent": "ua/1"}), 201)
    ok(admin.patch(f"/v1/keys/{made['id']}", json={"scopes": ["observer"]}))
    ok(admin.post(f"/v1/keys/{made['id']}/rotate", json={"grace": "1h"}))
    ok(admin.delete(f"/v1/keys/{made['id']}"))
    rule_id = rule(world, alpha, None)
    ok(admin.delete(f"/v1/alerts/rules/{rule_id}"))
    name = collection(world, alpha, None)
    ok(admin.delete(f"/v1/collections/{name}"))
    entries = ok(admin.get("/v1/audit?limit=1000"))["data"]
    assert {e["project_id"] for e in entries} == {"alpha"}
    mine = [e for e in entries if e["target"] in (made["id"], rule_id, name)]
    assert [e["action"] for e in reversed(mine)] == [
        "key.create",
        "key.update",
        "key.rotate",
        "key.revoke",
        "alert_rule.create",
        "alert_rule.delete",
        "collection.create",
        "collection.delete",
    ]
    created = mine[-1]
    assert created["client_ip"] == "127.0.0.1" and created["user_agent"] == "ua/1"
    assert created["actor_name"] == "admin" and created["actor_id"]
    assert made["key"] not in str(entries), "a secret never reaches the audit log"
    # Filters and cursor paging; the built-in admin sees every project's entries.
    keys_only = ok(admin.get("/v1/audit?action=key."))["data"]
    assert keys_only and all(e["action"].startswith("key.") for e in keys_only)
    first = ok(admin.get("/v1/audit?limit=2"))
    second = ok(admin.get(f"/v1/audit?limit=2&cursor={first['next_cursor']}"))
    assert first["has_more"] and {e["id"] for e in first["data"]}.isdisjoint(
        e["id"] for e in second["data"]
    )
    assert ok(admin.get("/v1/audit?since=1h&actor=nobody"))["data"] == []
    everywhere = {e["project_id"] for e in ok(world.root.get("/v1/audit?limit=1000"))["data"]}
    assert {"alpha", "beta"} <= everywhere
    assert admin.get("/v1/audit?since=soon").status_code == 400


def test_rotation_grace_and_expiry(world: World) -> None:
    admin = world.projects["alpha"].clients[A]
    made = ok(admin.post("/v1/keys", json={"name": "r", "scopes": ["observer"]}), 201)
    old = world.client(made["key"])
    assert old.get("/v1/traces").status_code == 200
    rotated = ok(admin.post(f"/v1/keys/{made['id']}/rotate", json={"grace": "1h"}))
    assert rotated["previous_expires_at"] is not None
    new = world.client(rotated["key"])
    assert old.get("/v1/traces").status_code == 200, "the old secret works for the grace"
    assert new.get("/v1/traces").status_code == 200
    ok(admin.post(f"/v1/keys/{made['id']}/rotate", json={}))  # a second rotation, no grace
    time.sleep(0.6)  # one access-version poll
    assert old.get("/v1/traces").status_code == 401
    assert new.get("/v1/traces").status_code == 401
    short = ok(admin.post("/v1/keys", json={"name": "s", "expires_in": "1s"}), 201)
    assert short["expires_at"] is not None
    brief = world.client(short["key"])
    assert brief.get("/v1/models").status_code == 200
    time.sleep(1.1)
    expired = brief.get("/v1/models")
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "key_expired"
    bad = admin.post("/v1/keys", json={"name": "b", "expires_in": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "expires_in"
    assert admin.post("/v1/keys", json={"name": "b", "scopes": ["root"]}).status_code == 400
    for http in (old, new, brief):
        http.close()


def test_cached_answers_are_not_shared_across_projects(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    prompt = {"temperature": 0, "messages": [{"role": "user", "content": unique("cache me")}]}
    first = chat(alpha.clients[I], **prompt)
    assert first.headers["x-trellis-cache"] == "miss"
    assert chat(alpha.clients[A], **prompt).headers["x-trellis-cache"] == "hit"
    assert chat(beta.clients[I], **prompt).headers["x-trellis-cache"] == "miss"


def test_grounded_chat_uses_only_the_projects_collections(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    own = chat(alpha.clients[I], trellis={"collections": [alpha.ids["collection"]]})
    assert own.status_code == 200, own.text
    other = chat(alpha.clients[I], trellis={"collections": [beta.ids["collection"]]})
    assert other.status_code == 404, other.text
    assert other.json()["error"]["param"] == "trellis.collections"


def test_an_eval_runs_model_calls_are_traced_in_its_project(world: World) -> None:
    alpha = world.projects["alpha"]
    query = "/v1/traces?q=Say: hi&limit=500"
    assert ok(alpha.clients[O].get(query))["data"], "the eval's chat calls are alpha's traces"
    in_default = world.client(ADMIN_KEY, "default")
    assert ok(in_default.get(query))["data"] == []
    in_default.close()


def test_rule_and_dataset_names_are_per_project(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    body = {"name": "same-name", "kind": "error_rate", "threshold": 0.5}
    ok(alpha.clients[A].post("/v1/alerts/rules", json=body), 201)
    ok(beta.clients[A].post("/v1/alerts/rules", json=body), 201)
    again = alpha.clients[A].post("/v1/alerts/rules", json=body)
    assert again.status_code == 400 and again.json()["error"]["code"] == "duplicate_name"
    upload = {"name": "shared-name", "content": CONTENT}
    assert ok(alpha.clients[E].post("/v1/evals/datasets", json=upload))["created"] is True
    assert ok(beta.clients[E].post("/v1/evals/datasets", json=upload))["created"] is True


def test_a_queue_from_traces_is_its_projects(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    body = {"traces": {"q": "hi"}, "scale": {"type": "pass_fail"}, "limit": 1000}
    made = ok(alpha.clients[E].post("/v1/evals/queues", json=body))
    assert made["project"] == "alpha"
    items = ok(alpha.clients[E].get(f"/v1/evals/queues/{made['id']}/items?limit=1000"))["data"]
    traced = {item["trace_id"] for item in items}
    assert alpha.ids["trace"] in traced and beta.ids["trace"] not in traced
    # The built-in admin makes a queue in the project it acts in, of that project's traces.
    in_beta = world.client(ADMIN_KEY, "beta")
    made_in_beta = ok(in_beta.post("/v1/evals/queues", json=body))
    assert made_in_beta["project"] == "beta"
    beta_items = ok(in_beta.get(f"/v1/evals/queues/{made_in_beta['id']}/items"))["data"]
    assert beta.ids["trace"] in {i["trace_id"] for i in beta_items}
    assert alpha.ids["trace"] not in {i["trace_id"] for i in beta_items}
    # A label of a trace item is a score in the trace's (the queue's) project.
    item = next(i for i in items if i["trace_id"] == alpha.ids["trace"])
    label = {"passed": True}
    ok(alpha.clients[O].post(f"/v1/evals/queues/{made['id']}/items/{item['id']}/label", json=label))
    scores = ok(alpha.clients[O].get(f"/v1/traces/{alpha.ids['trace']}"))["scores"]
    assert [s["name"] for s in scores if s["source"] == "eval"] == ["label"]
    # Its export is a dataset of the queue's project.
    ok(alpha.clients[E].post(f"/v1/evals/queues/{made['id']}/export", json={"dataset": "human"}))
    assert "human" in {d["name"] for d in ok(alpha.clients[E].get("/v1/evals/datasets"))["data"]}
    assert "human" not in {d["name"] for d in ok(beta.clients[E].get("/v1/evals/datasets"))["data"]}
    # Another project's queue does not exist for beta, nor for the admin acting in beta.
    assert beta.clients[E].get(f"/v1/evals/queues/{made['id']}").status_code == 404
    assert made["id"] not in str(ok(beta.clients[O].get("/v1/evals/queues")))
    assert in_beta.get(f"/v1/evals/queues/{made['id']}/items").status_code == 404
    in_beta.close()
    all_queues = {q["id"] for q in ok(world.root.get("/v1/evals/queues"))["data"]}
    assert {made["id"], alpha.ids["queue"], beta.ids["queue"]} <= all_queues
    # An inference key reads only the queues it made: the project's eval key made this one.
    denied = alpha.clients[I].get(f"/v1/evals/queues/{made['id']}")
    assert denied.status_code == 403


def test_limits_follow_projects_and_are_audited(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    admin = alpha.clients[A]
    # Its own project's limits: read, never raised or removed by the project's admin.
    assert ok(admin.get("/v1/limits/project:alpha"))["rpm"] == 100000
    for method in ("PUT", "DELETE"):
        body = {"rpm": 10**7} if method == "PUT" else None
        refused = admin.request(method, "/v1/limits/project:alpha", json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "insufficient_scope"
    # Another project's subjects, and the built-in admin's key, do not exist for it.
    root_id = next(k["id"] for k in ok(world.root.get("/v1/keys"))["data"] if k["project"] == "*")
    for subject in ("project:beta", beta.ids["limited_key"], f"key:{root_id}", "key:key_nope"):
        for method in ("GET", "PUT", "DELETE"):
            body = {"rpm": 5} if method == "PUT" else None
            answer = admin.request(method, f"/v1/limits/{subject}", json=body)
            assert answer.status_code == 404, (method, subject, answer.text)
    subjects = {row["subject"] for row in ok(admin.get("/v1/limits"))["data"]}
    assert subjects >= {"project:alpha", alpha.ids["limited_key"]}
    assert not subjects & {"project:beta", beta.ids["limited_key"]}
    everything = {row["subject"] for row in ok(world.root.get("/v1/limits"))["data"]}
    assert {"project:beta", beta.ids["limited_key"]} <= everything
    # Its keys' limits are its admin's, and every change is audited in the key's project.
    made = ok(admin.post("/v1/keys", json={"name": "capped", "limits": {"rpm": 50}}), 201)
    subject = f"key:{made['id']}"
    ok(admin.put(f"/v1/limits/{subject}", json={"rpm": 40, "daily_usd": 2}))
    ok(admin.delete(f"/v1/limits/{subject}"))
    ok(world.root.put("/v1/limits/project:alpha", json={"rpm": 200000}))
    entries = ok(admin.get("/v1/audit?action=limit.&limit=100"))["data"]
    mine = [(e["action"], e["detail"]) for e in reversed(entries) if e["target"] == subject]
    assert [action for action, _ in mine] == ["limit.set", "limit.set", "limit.delete"]
    assert mine[0][1]["rpm"] == 50 and (mine[1][1]["rpm"], mine[1][1]["daily_usd"]) == (40, 2)
    assert any(e["target"] == "project:alpha" for e in entries), "the root's change is alpha's"
    assert all(e["project_id"] == "alpha" for e in entries)
    # Usage: a key its own and its project's; observers its project's keys; 404 outside.
    inference, observer = alpha.clients[I], alpha.clients[O]
    assert ok(inference.get("/v1/usage/project:alpha"))["subject"] == "project:alpha"
    assert inference.get(f"/v1/usage/{alpha.ids['limited_key']}").status_code == 403
    assert ok(observer.get(f"/v1/usage/{alpha.ids['limited_key']}"))["limits"]["rpm"] == 100000
    assert observer.get(f"/v1/usage/{beta.ids['limited_key']}").status_code == 404
    assert inference.get("/v1/usage/project:beta").status_code == 404


def test_scheduled_evals_are_the_default_projects(world: World) -> None:
    alpha = world.projects["alpha"]
    default_admin = world.client(world.key("default", "admin"))
    default_observer = world.client(world.key("default", "observer"))
    (schedule,) = ok(default_observer.get("/v1/evals/schedules"))["data"]
    assert schedule["name"] == "nightly"
    assert ok(alpha.clients[O].get("/v1/evals/schedules"))["data"] == []
    assert alpha.clients[A].post("/v1/evals/schedules/nightly/run").status_code == 404
    in_alpha = world.client(ADMIN_KEY, "alpha")
    assert in_alpha.get("/v1/evals/schedules/nightly/runs").status_code == 404
    claim = ok(default_admin.post("/v1/evals/schedules/nightly/run"))
    deadline = time.monotonic() + 30
    while True:
        runs = ok(default_observer.get("/v1/evals/schedules/nightly/runs"))["data"]
        (run,) = [r for r in runs if r["id"] == claim["id"]]
        if run["status"] != "running":
            break
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    assert run["status"] == "passed", run
    assert ok(default_observer.get(f"/v1/evals/runs/{run['run_id']}"))["status"] == "succeeded"
    assert alpha.clients[E].get(f"/v1/evals/runs/{run['run_id']}").status_code == 404
    assert run["run_id"] not in str(ok(alpha.clients[O].get("/v1/evals/runs")))
    for http in (default_admin, default_observer, in_alpha):
        http.close()


def test_a_deleted_project_takes_its_own_limits(world: World) -> None:
    busy = world.root.delete("/v1/projects/alpha")
    assert busy.status_code == 409 and "eval_queues" in busy.json()["error"]["message"]
    ok(world.root.post("/v1/projects", json={"id": "gamma"}), 201)
    ok(world.root.put("/v1/limits/project:gamma", json={"rpm": 10}))
    ok(world.root.delete("/v1/projects/gamma"))
    gone = world.root.get("/v1/limits/project:gamma")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "limit_not_found"


def test_collection_names_are_per_project(world: World) -> None:
    alpha, beta = world.projects["alpha"], world.projects["beta"]
    for project, text in ((alpha, "Alpha keeps otters."), (beta, "Beta keeps herons.")):
        admin = project.clients[A]
        made = ok(admin.post("/v1/collections", json={"name": "shared"}), 201)
        assert made["project"] == project.id
        documents = {"documents": [{"id": "d1", "text": text}]}
        ok(project.clients[G].post("/v1/collections/shared/documents", json=documents))
    again = alpha.clients[A].post("/v1/collections", json={"name": "shared"})
    assert again.status_code == 400 and again.json()["error"]["code"] == "collection_exists"
    # Each project reads, searches and grounds on its own "shared".
    for project, word in ((alpha, "otters"), (beta, "herons")):
        hits = ok(project.clients[I].post("/v1/collections/shared/search", json={"query": word}))
        assert [h["text"] for h in hits["data"]] == [
            "Alpha keeps otters." if project is alpha else "Beta keeps herons."
        ]
        assert ok(project.clients[I].get("/v1/collections/shared"))["documents"] == 1
        grounded = chat(project.clients[I], trellis={"collections": ["shared"]})
        assert grounded.status_code == 200, grounded.text
        (citation,) = grounded.json()["citations"]
        assert citation["collection"] == "shared" and word in citation["snippet"]
    # The default project (the built-in admin without a project) has none of that name.
    assert world.root.get("/v1/collections/shared").status_code == 404
    listed = [c for c in ok(world.root.get("/v1/collections"))["data"] if c["name"] == "shared"]
    assert sorted(c["project"] for c in listed) == ["alpha", "beta"]
    # Deleting alpha's leaves beta's; a re-index keeps the collection in its project.
    ok(beta.clients[A].post("/v1/collections/shared/reindex"))
    ok(alpha.clients[A].delete("/v1/collections/shared"))
    assert alpha.clients[I].get("/v1/collections/shared").status_code == 404
    assert ok(beta.clients[I].get("/v1/collections/shared"))["project"] == "beta"
