"""The prompt format every instruction-following model in the graph is trained and scored with.

A prompt is `<|user|>{prompt}<|assistant|>`; a response ends with the tokenizer's
EOS (`<|endoftext|>` in a tokenizer trained here; a user's pretrained model keeps
the EOS it learned to emit). The special assistant token makes the response
boundary unambiguous, and the chat template saved with each tokenizer reproduces
exactly this string, so
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` works for
anyone who loads a model with plain transformers.

A multi-turn prompt (a conversation ending with a user turn) is kept, like a
single request, as one string: the conversation in this format without its
opening user token and closing assistant token (`conversation_prompt`), so that
`format_prompt` renders it exactly as the chat template renders the messages,
and every step that formats, samples or scores a prompt handles both alike.
"""

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, EOS, USER, ASSISTANT)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def conversation_prompt(messages: list[dict]) -> str:
    """The prompt string of a conversation ending with a user turn (one user turn: its text)."""
    text = "".join(USER + m["content"] if m["role"] == "user" else ASSISTANT + m["content"] + EOS for m in messages)
    return text.removeprefix(USER)


def format_prompt(prompt: str) -> str:
    """The text a policy is conditioned on; generation continues after the assistant token."""
    return f"{USER}{prompt.strip()}{ASSISTANT}"


def raw_prompt(prompt: str) -> str:
    """How a base model is asked, as in the source: the bare request, then a new line."""
    return prompt.strip() + "\n"
