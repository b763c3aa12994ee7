"""Chat prompts: render a list of messages with the model's own chat template."""
from __future__ import annotations

from typing import Any, Sequence

from leanlm.errors import LeanlmError

ROLES = ("system", "user", "assistant", "tool")


def chat_prompt(tokenizer: Any, messages: Sequence[dict], system: str | None = None) -> str:
    """The prompt text for `messages`, ending where the assistant's reply starts.

    Args:
        tokenizer: a Hugging Face tokenizer that has a `chat_template`.
        messages: [{"role": "user", "content": "..."}, ...] (roles: system, user, assistant, tool).
        system: a system message to put first (unless messages already start with one).

    Example:
        >>> chat_prompt(tok, [{"role": "user", "content": "Hi!"}])
        '<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n'
    """
    if not getattr(tokenizer, "chat_template", None):
        raise LeanlmError("this model has no chat template; pass a plain prompt with chat=False")
    msgs = [_check(m, i) for i, m in enumerate(messages)]
    if not msgs:
        raise LeanlmError("the message list is empty; give at least one user message")
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    if not any(m["content"].strip() for m in msgs if m["role"] != "system"):
        raise LeanlmError("the prompt is empty; give some text to continue")
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def _check(message: Any, index: int) -> dict:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise LeanlmError(f"message {index} must be a dict with 'role' and 'content'")
    if message["role"] not in ROLES:
        raise LeanlmError(f"message {index} has unknown role {message['role']!r}; valid: {', '.join(ROLES)}")
    if not isinstance(message["content"], str):
        raise LeanlmError(f"message {index} content must be a string")
    return {"role": message["role"], "content": message["content"]}
