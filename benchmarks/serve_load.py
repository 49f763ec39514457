"""`dgemma serve` under load: N concurrent clients against the same requests served one at a time.

For each N in --clients (default 1, 4, 16), N threads each send --per-client streaming chat requests
(distinct prompts of different lengths, fixed seeds, --max-tokens each) to a live server; then the
same N x per-client requests go one at a time. Printed per N: requests/s, generated tokens/s, latency
p50/p95 (request sent to [DONE]) and time to first content, for both, plus the largest batch a
request shared. Answers are compared too: concurrent and one-at-a-time must be identical.

    python benchmarks/serve_load.py [--model DIR] [--size tiny|mid] [--clients 1 4 16]

Without --model it builds a random model with the 128-word test vocabulary: `tiny` is the test
geometry (the figures are then mostly HTTP and scheduling cost), `mid` a wider one (hidden 512,
canvas 32) where the forward pass dominates, as it does on a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"

MID = {
    "hidden_size": 512,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "global_head_dim": 128,
    "num_global_key_value_heads": 1,
    "num_experts": 8,
    "top_k_experts": 2,
    "sliding_window": 64,
}
WORDS = "tell me a story about the sky and the sun and the moon and why it is blue at night".split()


def build_model(size: str) -> Path:
    sys.path.insert(0, str(TESTS))
    import tiny_models as tm

    path = Path(tempfile.mkdtemp(prefix=f"dgemma-serve-{size}-"))
    if size == "tiny":
        return tm.word_chat_model(path)
    config = {**tm.WORD_CONFIG, "canvas_length": 32, "text_config": {**tm.WORD_CONFIG["text_config"], **MID}}
    config["text_config"]["layer_types"] = ["sliding_attention"] * 5 + ["full_attention"]
    model = tm.random_model(config, seed=0, sharpened=True)
    tm.save_model(
        model, path, config, {**tm.WORD_GENERATION, "max_new_tokens": 64, "max_denoising_steps": 16}
    )
    tm.write_word_tokenizer(path)
    return path


def one_request(base: str, name: str, i: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base, api_key="bench", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": " ".join(WORDS[: 2 + (i * 7) % 15])}]
    start = time.perf_counter()
    first = None
    text, usage = [], None
    for chunk in client.chat.completions.create(
        model=name, messages=messages, seed=i, max_tokens=max_tokens, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    return {
        "latency": time.perf_counter() - start,
        "first": first or 0.0,
        "text": "".join(text),
        "tokens": usage.completion_tokens,
        "batch_rows": usage.model_extra["dgemma"]["batch_rows"],
    }


def run(base: str, name: str, clients: int, per_client: int, max_tokens: int, concurrent: bool) -> dict:
    ids = list(range(clients * per_client))
    results: dict[int, dict] = {}

    def worker(mine: list[int]) -> None:
        for i in mine:
            results[i] = one_request(base, name, i, max_tokens)

    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=worker, args=(ids[c::clients],)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        worker(ids)
    wall = time.perf_counter() - start
    latencies = sorted(r["latency"] for r in results.values())
    return {
        "wall": wall,
        "rps": len(ids) / wall,
        "tps": sum(r["tokens"] for r in results.values()) / wall,
        "p50": statistics.median(latencies),
        "p95": latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))],
        "first_p50": statistics.median(r["first"] for r in results.values()),
        "batch_rows": max(r["batch_rows"] for r in results.values()),
        "texts": {i: r["text"] for i, r in results.items()},
    }


def rss_mb(pid: int) -> float:
    """The server's resident memory (ps works on macOS and Linux): growth across rounds is a leak."""
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout
    return int(out.strip() or 0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a checkpoint with a chat template (default: built)")
    parser.add_argument("--size", choices=("tiny", "mid"), default="mid")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the whole sweep (RSS and latency drift)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from serve_helpers import running_server

    model = args.model or build_model(args.size)
    print(
        f"model {model} ({'given' if args.model else args.size}), {args.per_client} requests per client, "
        f"max_tokens {args.max_tokens}"
    )
    header = "clients       mode   req/s    tok/s   p50 s   p95 s first p50 batch"
    with running_server(model, "--max-batch", str(max(args.clients)), "--max-queue", "256") as server:
        name = json.loads(urllib.request.urlopen(f"{server.url}/health").read())["model"]
        one_request(server.base, name, 0, 8)  # warm up (first-call compilation)
        print(f"server RSS after warm-up: {rss_mb(server.proc.pid):.0f} MB")
        for round_ in range(args.rounds):
            print(header if args.rounds == 1 else f"round {round_ + 1}\n{header}")
            for clients in args.clients:
                together = run(server.base, name, clients, args.per_client, args.max_tokens, concurrent=True)
                alone = run(server.base, name, clients, args.per_client, args.max_tokens, concurrent=False)
                for mode, r in (("concurrent", together), ("one by one", alone)):
                    print(
                        f"{clients:>7} {mode:>10} {r['rps']:>7.2f} {r['tps']:>8.1f} {r['p50']:>7.2f} "
                        f"{r['p95']:>7.2f} {r['first_p50']:>9.2f} {r['batch_rows']:>5}"
                    )
                same = together["texts"] == alone["texts"]
                speedup = together["tps"] / alone["tps"]
                print(f"{'':>18} speed-up x{speedup:.2f}, answers identical: {same}")
            print(f"server RSS: {rss_mb(server.proc.pid):.0f} MB")


if __name__ == "__main__":
    main()
