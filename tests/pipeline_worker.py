"""Run under `mlx.launch` by tests/test_pipeline.py: one rank of a pipelined model, reporting as JSON.

One launch does it all, since each costs seconds of start-up: `dgemma generate --pipeline`, a
two-turn `dgemma chat --pipeline` and `dgemma batch --pipeline` (in this process, through Typer's
runner), then the library: the layers this rank holds, the parameters it loaded, a two-row
generation and a two-turn chat (rank 0 leads, the others follow), and the bytes it sent. Prints one
JSON line per rank.
"""

import json
import sys
import threading

from mlx.utils import tree_flatten
from typer.testing import CliRunner

from dgemma_mlx import generate
from dgemma_mlx.distributed import leave_group
from dgemma_mlx.pipeline import load_pipeline, pipeline_ranks
from dgemma_mlx.pipeline_session import SharedSession, follow
from dgemma_mlx.session import ChatSession

PROMPTS = ["hello there how are you", "what is the moon"]
TURNS = ["hello there", "how are you"]
GENERATE_ARGS = ["-p", PROMPTS[0], "--seed", "3", "--max-tokens", "24", "--json", "--view", "none"]
CHAT_ARGS = ["--seed", "5", "--view", "none"]
CHAT_SCRIPT = "\n".join([*TURNS, "/quit", ""])


BATCH_ARGS = ["--seed", "4", "-b", "2"]


def commands(model_dir: str, work: str) -> dict[str, dict[str, object]]:
    """The commands with --pipeline, as each rank ran them: exit code, stdout, stderr. The batch reads
    `work`/in.txt and writes `work`/pipelined.jsonl."""
    from dgemma_mlx.cli.app import app

    chat = ["chat", "-m", model_dir, *CHAT_ARGS, "--pipeline"]
    batch = ["batch", f"{work}/in.txt", "-o", f"{work}/pipelined.jsonl", "-m", model_dir, *BATCH_ARGS]
    runs = {
        "generate": CliRunner().invoke(app, ["generate", "-m", model_dir, *GENERATE_ARGS, "--pipeline"]),
        "chat": CliRunner().invoke(app, chat, input=CHAT_SCRIPT),
        "batch": CliRunner().invoke(app, [*batch, "--pipeline"]),
    }
    return {k: {"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr} for k, r in runs.items()}


SERVE_PROMPTS = ["hello there", "what is the moon", "how are you"]


def serve_specs(model, tokenizer) -> list:
    """Three requests (two with two choices) and one more that its client abandons at once."""
    from dgemma_mlx.api import resolve_config
    from dgemma_mlx.server.scheduler import JobSpec

    config = resolve_config(model, tokenizer).replace(max_new_tokens=16)
    ids = [tokenizer.encode(text) for text in SERVE_PROMPTS]
    choices = [2, 1, 2]
    specs = [JobSpec([ids[i]] * n, [7 + 10 * i + c for c in range(n)], config) for i, n in enumerate(choices)]
    return specs + [JobSpec([ids[0]], [99], config)]


def serve_jobs(scheduler, specs) -> list[list[list[int]]]:
    """Submit every spec at once (the last is cancelled as soon as it is queued); each job's final
    tokens per choice. The scheduler is closed afterwards."""
    from dgemma_mlx.server.scheduler import Committed, Failed

    finals: list[dict[int, list[int]]] = [{} for _ in specs]
    done = threading.Semaphore(0)

    def sink(k: int, n: int):
        def receive(event) -> None:
            if isinstance(event, Committed) and event.final:
                finals[k][event.choice] = event.tokens
                if len(finals[k]) == n:
                    done.release()
            elif isinstance(event, Failed):
                raise AssertionError(event)

        return receive

    scheduler.start()
    jobs = [scheduler.submit(spec, sink(k, len(spec.prompts))) for k, spec in enumerate(specs)]
    jobs[-1].cancel()
    for _ in specs[:-1]:
        assert done.acquire(timeout=120), "a served job never finished"
    scheduler.close()
    return [[f[c] for c in sorted(f)] for f in finals[:-1]]


def main(model_dir: str, work: str) -> None:
    cli = commands(model_dir, work)
    ranks = pipeline_ranks()
    model, tokenizer = load_pipeline(model_dir, ranks)
    held = [i for i, layer in enumerate(model.layers) if layer is not None]
    params = sum(v.size for _, v in tree_flatten(model.parameters()))
    result = generate(model, tokenizer, PROMPTS, seed=3, max_new_tokens=24)
    sent_generate = model.bytes_sent
    top_k = generate(model, tokenizer, PROMPTS, seed=3, max_new_tokens=24, self_conditioning_top_k=8)
    session = ChatSession(model, tokenizer, seed=5)
    answers: list[list[int]] = []
    if ranks.is_root:
        shared = SharedSession(session, ranks)
        for text in TURNS:
            *_, finish = shared.stream(text)
            answers.append(finish.result.new_tokens[0])
        shared.close()
    else:
        follow(session, ranks)
    from dgemma_mlx.api import resolve_config
    from dgemma_mlx.server.pipeline_scheduler import PipelineScheduler

    scheduler = PipelineScheduler(model, resolve_config(model, tokenizer), ranks, max_batch=4)
    if ranks.is_root:
        served = serve_jobs(scheduler, serve_specs(model, tokenizer))
    else:
        served = scheduler.run_follower()
    report = {
        "rank": ranks.rank,
        "layers": held,
        "params": params,
        "generate": result.new_tokens,
        "generate_top_k": top_k.new_tokens,
        "chat": answers,
        "history": session.messages,
        "bytes_sent_generate": sent_generate,
        "cli": cli,
        "served": served,
    }
    print(json.dumps(report), flush=True)
    leave_group(0)  # as the dgemma command does under mlx.launch: no backend teardown at exit


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
