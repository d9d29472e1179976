"""A running app on a free localhost port, with the tiny random model as its base."""

from __future__ import annotations

import socket

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
