"""A running app on a free localhost port, with the tiny random model as its base."""

from __future__ import annotations

import json
import socket
import uuid

import httpx
import pytest

from webui.app import CACHE_S, build_app, launch_kwargs
from webui.state import AppState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(state: AppState, listen: bool = False, auth: tuple[str, str] | None = None, cache_s: int = CACHE_S,
          **launch):
    """The app on 127.0.0.1 (with `listen`, its Host rule and confinement are --listen's); `launch`: launch_kwargs'."""
    demo = build_app(state, cache_s=cache_s).queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, auth=auth,
                **launch_kwargs(state, listen, **launch))
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    state = AppState.create(tmp_path_factory.mktemp("outputs"))
    demo, url = serve(state)
    yield url, state
    demo.close()


# ---- a client of the real server, as any web page could be: gradio's queue protocol ---------------------
def queue_call(client: httpx.Client, fn_index: int, data: list) -> dict:
    """Run handler `fn_index` through the queue with this client (its cookies, its base URL); the final message,
    or a `rejected` message with the HTTP status when the server refuses to queue it."""
    session = uuid.uuid4().hex
    joined = client.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                        "event_data": None, "trigger_id": None})
    if joined.status_code != 200:
        return {"msg": "rejected", "status": joined.status_code, "output": {"error": joined.text}}
    with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError("no completion message")


def config_of(url: str) -> dict:
    return httpx.get(url + "config", timeout=30).json()


def dependency(config: dict, label: str) -> dict:
    """The dependency triggered by the button labelled `label`."""
    ids = {c["id"] for c in config["components"] if c["type"] == "button" and c["props"].get("value") == label}
    return next(d for d in config["dependencies"] if any(t[0] in ids for t in d["targets"]))


def inputs_for(config: dict, dep: dict, **by_label) -> list:
    components = {c["id"]: c for c in config["components"]}
    out = []
    for i in dep["inputs"]:
        comp = components[i]
        label = comp["props"].get("label") or comp["props"].get("elem_id") or ""
        out.append(by_label[label] if label in by_label else comp["props"].get("value"))
    return out


def message_of(msg: dict) -> str:
    return json.dumps(msg.get("output", {}), ensure_ascii=False)


def refused(msg: dict) -> bool:
    """A refusal the user reads: our ⚠ sentence, or gradio's own error for a value outside a widget's choices."""
    return "⚠" in message_of(msg) or msg.get("success") is False
