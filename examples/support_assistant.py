"""Customer-service assistant: answer a customer's question from a knowledge base, citing the passage.

The server indexes the knowledge base (`leanlm serve ... --knowledge-base FILE`): here by default the
~30-passage FAQ of a made-up shop in examples/data/support_faq.txt, or any .txt / JSONL / SQuAD JSON
via --knowledge-base. POST /v1/answer with the question alone retrieves the nearest passages by
embedding and, when the server holds an extractive QA model, returns the answer span from the best
one; otherwise the best passage itself. With --generate a served chat model words a short reply
grounded in that passage (/v1/chat/completions), and the source is still shown.

Usage:
    python examples/support_assistant.py "How long do refunds take?"          # starts a server on minilm-l6
    python examples/support_assistant.py --qa-model runs/qa --generate "Can I pay in instalments?"
    python examples/support_assistant.py --url http://127.0.0.1:8000 -i        # ask questions interactively
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _client import RUNS, Client, add_server_args, server  # noqa: E402

FAQ = Path(__file__).resolve().parent / "data" / "support_faq.txt"
DEFAULT_QUESTIONS = ["How long does a refund take?", "Do gift cards expire?", "How can I reset my password?"]
SYSTEM = ("You are a friendly customer-service assistant. Answer in one or two sentences using only the "
          "passage below; if it does not answer the question, say you will pass it to a colleague.\n\nPassage: {}")


def serve_args(args: argparse.Namespace) -> list[str]:
    """The default server: the bundled MiniLM embeds the knowledge base; a QA and a chat model when asked."""
    out = ["minilm-l6", "--knowledge-base", args.knowledge_base, "--embedder", "minilm-l6", "--no-access-log"]
    if args.qa_model:
        out += ["--name", f"qa={args.qa_model}"]
    if args.generate:
        out += ["--name", f"chat={args.chat_model or 'smollm2-135m'}"]
    return out


def ask(client: Client, question: str, args: argparse.Namespace) -> dict:
    body = {"question": question, "top_k": args.top_k, **({"model": args.model} if args.model else {})}
    got = client.post("/v1/answer", body)
    result = {"question": question, "answer": got["answer"], "score": got["score"], "mode": got.get("mode"),
              "source": got["source"], "sources": [s["id"] for s in got["sources"]]}
    if args.generate:
        chat = {"messages": [{"role": "system", "content": SYSTEM.format(got["source"]["text"])},
                             {"role": "user", "content": question}],
                "max_tokens": args.max_tokens, "temperature": 0}
        name = args.chat_model if args.url else "chat"  # a server started here serves it as "chat"
        if name:
            chat["model"] = name
        result["reply"] = client.post("/v1/chat/completions", chat)["choices"][0]["message"]["content"].strip()
    return result


def show(r: dict) -> None:
    print(f"Q: {r['question']}")
    if "reply" in r:
        print(f"A: {r['reply']}")
    print(f"   answer: {r['answer']!r} (score {r['score']:.3f}, {r['mode']})")
    print(f"   source [{r['source']['id']}]: {r['source']['text'][:160]}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(p, "The served QA model's name (default: the server's only one; none: retrieval only).")
    p.add_argument("questions", nargs="*", help="Questions (default: three sample ones).")
    p.add_argument("-i", "--interactive", action="store_true", help="Read questions from stdin, one per line.")
    p.add_argument("--knowledge-base", default=str(FAQ), help="Passages for a server started here.")
    p.add_argument("--qa-model", help="An extractive QA model directory for a server started here.")
    p.add_argument("--top-k", type=int, default=3, help="Passages retrieved per question.")
    p.add_argument("--generate", action="store_true", help="Word a grounded reply with a chat model.")
    p.add_argument("--chat-model", help="The chat model (served name with --url; default smollm2-135m).")
    p.add_argument("--max-tokens", type=int, default=60, help="Longest generated reply.")
    p.add_argument("--out", default=str(RUNS / "support-assistant" / "answers.json"), help="Where to save the answers.")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with server(args.url, [] if args.url else serve_args(args), out.parent / "server.log") as url:
        client = Client(url, args.api_key)
        questions = sys.stdin if args.interactive else (args.questions or DEFAULT_QUESTIONS)
        for q in questions:
            if q.strip():
                results.append(ask(client, q.strip(), args))
                show(results[-1])
        client.close()
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {len(results)} answers to {out}")
    return results


if __name__ == "__main__":
    main()
