"""Script the page runs before Gradio's own: a cap on animation frames while nobody touches the page.

Gradio 6's status tracker keeps a `requestAnimationFrame` loop running for as long as a page is open, busy or
not (its elapsed-time counter, `statustracker-*.js`): about 75 frames a second, and for a Train tab in front
that only watches a job about 50 ms of browser CPU a second, on the same two cores that train
(docs/benchmarks.md, "Watching a job"). Gradio has no setting for it. Its client captures
`requestAnimationFrame` when its modules load, so a script in `launch(head=...)` (inserted by the client after
that) does not reach it: `FrameCap`, a middleware, puts this script at the top of the page's `<head>`, where it
runs before any module. While nobody touches the page, each frame asked for waits FRAME_CAP_MS first (then
has its own browser frame); for a second after any pointer, key or wheel input (a slider dragged, a plot
panned) frames go straight to the browser. Cancel works on both kinds of ids. A hidden tab runs no frames
either way; CSS animations (the spinners) do not go through it.
"""

from __future__ import annotations

FRAME_CAP_MS = 100  # idle Train tab: 55-84 -> 25-28 ms/s of chromium CPU (EPYC-bf16, docs/benchmarks.md)
LIVELY_MS = 1000  # full rate this long after the last input

_SCRIPT = """<script>
(() => {
  const raf = window.requestAnimationFrame.bind(window), cancel = window.cancelAnimationFrame.bind(window);
  const OURS = 1e9;  // ids from here up are frames this script holds back; below, the browser's own
  let next = OURS, lively = 0;
  const waiting = new Map();  // id -> {timer} while held back, then {frame}
  const touched = () => { lively = performance.now() + LIVELY_MS; };
  for (const type of ["pointerdown", "pointermove", "keydown", "wheel", "touchstart"]) {
    window.addEventListener(type, touched, {capture: true, passive: true});
  }
  // Each callback keeps its own browser frame (no batching: Gradio's dataframe stopped taking edits when its
  // callbacks shared one); an idle page's request waits CAP_MS first.
  window.requestAnimationFrame = (callback) => {
    if (performance.now() < lively) return raf(callback);
    const id = next++;
    const timer = setTimeout(() => {
      waiting.set(id, {frame: raf((time) => { waiting.delete(id); callback(time); })});
    }, CAP_MS);
    waiting.set(id, {timer});
    return id;
  };
  window.cancelAnimationFrame = (id) => {
    if (id < OURS) return cancel(id);
    const held = waiting.get(id);
    waiting.delete(id);
    if (held && held.timer !== undefined) clearTimeout(held.timer);
    else if (held) cancel(held.frame);
  };
  window.__loramixFrameCap = CAP_MS;
})();
</script>"""


def frame_cap_script(cap_ms: float = FRAME_CAP_MS) -> str:
    """The `<script>` that caps idle animation frames at one per `cap_ms` (0: no cap, an empty string)."""
    if not cap_ms:
        return ""
    return _SCRIPT.replace("LIVELY_MS", str(LIVELY_MS)).replace("CAP_MS", f"{cap_ms:g}")


def _header(message: dict, name: bytes) -> bytes:
    return next((v for k, v in message.get("headers", []) if k.lower() == name), b"")


class FrameCap:
    """ASGI middleware: the app's page (GET /, text/html, not encoded) gets `frame_cap_script` as the first thing
    in its `<head>`; every other response passes through untouched, streamed as it came."""

    def __init__(self, app, cap_ms: float = FRAME_CAP_MS):
        self.app = app
        self.script = frame_cap_script(cap_ms).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/" or not self.script:
            return await self.app(scope, receive, send)
        start, chunks = None, []

        async def rewrite(message):
            nonlocal start
            if message["type"] == "http.response.start":
                if _header(message, b"content-type").startswith(b"text/html") and \
                        not _header(message, b"content-encoding"):
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks).replace(b"<head>", b"<head>" + self.script, 1)
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)
