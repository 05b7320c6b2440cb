"""A small OpenAI-compatible chat-completions server on loopback for the LLM-judge tests.

It is a real HTTP server (http.server in a thread) that answers POST /v1/chat/completions deterministically:
- fair:      reads the two answers from the judge prompt and answers "A", "B" or "tie" by the letters rule
             (share of a–m among non-space characters), as a careful judge of the letters task would;
- always_a:  always "A" (the position bias that swapping must cancel);
- error:     HTTP 500 (an endpoint that refuses);
- refuse:    a 200 whose text is a refusal with no verdict;
- slow:      waits `delay` seconds before answering (a timeout).
It counts requests, records the Authorization headers it saw, and can require a key.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _score(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c in "abcdefghijklm" for c in chars) / len(chars) if chars else 0.0


class JudgeServer:
    def __init__(self, mode: str = "fair", key: str | None = None, delay: float = 2.0):
        self.mode, self.key, self.delay = mode, key, delay
        self.requests, self.auth = 0, []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                with server.lock:
                    server.requests += 1
                    server.auth.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": "bad key"})
                if server.mode == "error":
                    return self._send(500, {"error": "overloaded"})
                if server.mode == "slow":
                    time.sleep(server.delay)
                text = {"always_a": "A", "refuse": "I'm sorry, I can't compare these answers."}.get(server.mode)
                if text is None:
                    prompt = body["messages"][-1]["content"]
                    m = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nReply with", prompt, re.S)
                    a, b = _score(m.group(1)), _score(m.group(2))
                    text = "tie" if a == b else "A" if a > b else "B"
                return self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
