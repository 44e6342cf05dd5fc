"""A stand-in for a vLLM pod, for `reprise route`'s tests: an OpenAI-ish HTTP
server and vLLM's KV-event publisher, as vLLM 0.26 does it (pyzmq, msgpack):
events as tagged maps, 32-byte block hashes of this process's own scheme (seeded, so
two fakes never agree with each other or with reprise), an empty topic, and a ROUTER
replay socket answering `[start_seq]` with `[topic, seq, payload]` frames and the end
marker `[b"", 0xff*8, b""]`.

Control endpoints let a test publish without serving:
  POST /admin/store  {"token_ids": [...], "live": true}  stores the full blocks;
                     live=false puts the batch in the replay buffer only (as if the
                     PUB socket had dropped it).
  GET  /admin/requests  the bodies of the completions it served, in order.

Prints `fake-vllm: http=PORT events=PORT replay=PORT` once listening.
"""

import argparse
import hashlib
import http.server
import json
import threading
import time

import msgpack
import zmq

END = b"\xff" * 8


class Engine:
    def __init__(self, ctx, block_size, seed):
        self.block_size = block_size
        self.seed = seed
        self.pub = ctx.socket(zmq.PUB)
        self.pub.bind("tcp://127.0.0.1:*")
        self.router = ctx.socket(zmq.ROUTER)
        self.router.bind("tcp://127.0.0.1:*")
        self.lock = threading.Lock()
        self.seq = 0
        self.buffer = []  # (seq, payload)
        self.stored = {}  # hash -> True

    def port(self, sock):
        return sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]

    def _hash(self, parent, tokens):
        h = hashlib.sha256(self.seed.to_bytes(8, "little"))
        h.update(parent or b"root")
        h.update(msgpack.packb(tokens))
        return h.digest()

    def store(self, token_ids, live):
        bs = self.block_size
        full = len(token_ids) // bs
        hashes, parent, first_parent = [], None, None
        new_tokens = []
        for i in range(full):
            block = token_ids[i * bs:(i + 1) * bs]
            h = self._hash(parent, block)
            if h in self.stored:
                parent = h
                continue
            if not hashes:
                first_parent = parent
            hashes.append(h)
            new_tokens.extend(block)
            self.stored[h] = True
            parent = h
        if not hashes:
            return None
        event = {
            "type": "BlockStored",
            "block_hashes": hashes,
            "parent_block_hash": first_parent,
            "token_ids": new_tokens,
            "block_size": bs,
            "lora_id": None,
            "medium": "GPU",
            "lora_name": None,
        }
        return self._publish([event], live)

    def _publish(self, events, live):
        payload = msgpack.packb([time.time(), events, 0], use_bin_type=True)
        with self.lock:
            seq = self.seq
            self.seq += 1
            self.buffer.append((seq, payload))
            if live:
                self.pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])
        return seq

    def serve_replays(self):
        while True:
            frames = self.router.recv_multipart()
            if len(frames) != 3 or frames[1] != b"":
                continue
            ident, start = frames[0], int.from_bytes(frames[2], "big")
            with self.lock:
                batches = [b for b in self.buffer if b[0] >= start]
            for seq, payload in batches:
                self.router.send_multipart([ident, b"", b"", seq.to_bytes(8, "big"), payload])
            self.router.send_multipart([ident, b"", b"", END, b""])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1")
    a = ap.parse_args()
    engine = Engine(zmq.Context(), a.block_size, a.seed)
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code, body, ctype="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._send(200, b"", "text/plain")
            elif self.path == "/metrics":
                text = (
                    f'vllm:num_requests_running{{engine="0",model_name="{a.model}"}} 0.0\n'
                    f'vllm:num_requests_waiting{{engine="0",model_name="{a.model}"}} 0.0\n'
                    f'vllm:kv_cache_usage_perc{{engine="0",model_name="{a.model}"}} 0.1\n'
                    f'vllm:cache_config_info{{block_size="{a.block_size}",engine="0",num_gpu_blocks="1000"}} 1.0\n'
                )
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            elif self.path == "/admin/requests":
                self._send(200, served)
            else:
                self._send(404, {"error": {"message": "no route", "type": "invalid_request_error"}})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path == "/admin/store":
                req = json.loads(body)
                seq = engine.store(req["token_ids"], req.get("live", True))
                self._send(200, {"seq": seq})
            elif self.path == "/v1/completions":
                served.append(body.decode())
                self._send(200, {
                    "id": "cmpl-fake", "object": "text_completion", "created": 0, "model": a.model,
                    "choices": [{"index": 0, "text": " fake", "logprobs": None, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })
            else:
                self._send(404, {"error": {"message": "no route", "type": "invalid_request_error"}})

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=engine.serve_replays, daemon=True).start()
    print(
        f"fake-vllm: http={httpd.server_address[1]} events={engine.port(engine.pub)} "
        f"replay={engine.port(engine.router)}",
        flush=True,
    )
    httpd.serve_forever()


if __name__ == "__main__":
    main()
