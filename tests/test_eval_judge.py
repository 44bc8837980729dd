"""The pairwise judge asks every prompt in both orders and counts only order-independent wins."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from training.evaluate.judge import EndpointJudge, compare, judge_message

PROMPTS = ["p1", "p2", "p3"]
MINE = ["good 1", "good 2", "good 3"]
THEIRS = ["bad 1", "bad 2", "bad 3"]


class RecordingJudge:
    """Prefers answers starting with 'good'; or, with `always`, picks a fixed position."""

    name = "recording"

    def __init__(self, always: str | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.always = always

    def choose(self, prompt, first, second):
        self.calls.append((prompt, first, second))
        if self.always:
            return self.always
        return "A" if first.startswith("good") else "B"


def test_each_prompt_is_asked_in_both_orders():
    judge = RecordingJudge()
    compare(judge, PROMPTS, MINE, THEIRS, "mine", "theirs", progress=False)
    assert judge.calls == [
        call for p, m, t in zip(PROMPTS, MINE, THEIRS, strict=True) for call in ((p, m, t), (p, t, m))
    ]


def test_a_consistent_judge_gives_wins_with_counts():
    result = compare(RecordingJudge(), PROMPTS, MINE, THEIRS, "mine", "theirs", progress=False)
    assert (result.wins, result.losses, result.ties, result.n) == (3, 0, 0, 3)
    assert result.win_rate == 1.0
    assert result.first_position_picks == 3  # once per prompt: when "good" stood first
    reverse = compare(RecordingJudge(), PROMPTS, THEIRS, MINE, "theirs", "mine", progress=False)
    assert (reverse.wins, reverse.losses, reverse.win_rate) == (0, 3, 0.0)


@pytest.mark.parametrize("position", ["A", "B"])
def test_a_position_biased_judge_only_produces_ties(position):
    result = compare(RecordingJudge(always=position), PROMPTS, MINE, THEIRS, "mine", "theirs", progress=False)
    assert (result.wins, result.losses, result.ties) == (0, 0, 3)
    assert result.win_rate == 0.5
    assert result.first_position_picks == (6 if position == "A" else 0)
    assert [d["winner"] for d in result.decisions] == ["tie"] * 3


def test_endpoint_judge_over_loopback():
    """An OpenAI-compatible server that answers 'B' when 'good' is the second answer, else 'A'."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            text = body["messages"][0]["content"]
            answer = "B." if "Answer B:\ngood" in text else "A"
            payload = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": answer}}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = EndpointJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", api_key="k")
        result = compare(judge, PROMPTS, MINE, THEIRS, "mine", "theirs", progress=False)
        judge.close()
    finally:
        server.shutdown()
    assert (result.wins, result.ties) == (3, 0)
    assert len(seen) == 6 and seen[0]["path"] == "/v1/chat/completions" and seen[0]["auth"] == "Bearer k"
    assert seen[0]["model"] == "judge-model" and seen[0]["temperature"] == 0
    assert seen[0]["messages"][0]["content"] == judge_message("p1", "good 1", "bad 1")
    assert seen[1]["messages"][0]["content"] == judge_message("p1", "bad 1", "good 1")
