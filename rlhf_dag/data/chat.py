"""The prompt format every instruction-following model in the graph is trained and scored with.

A prompt is `<|user|>{prompt}<|assistant|>`; a response ends with the tokenizer's
EOS (`<|endoftext|>` in a tokenizer trained here; a user's pretrained model keeps
the EOS it learned to emit). An instruction-tuned checkpoint keeps its own chat
template (SmolLM2's `<|im_start|>user ... <|im_end|>`): `format_prompt` with its
tokenizer renders a request in that format instead. The special assistant token makes the response
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


def has_own_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template of its own (an instruction-tuned checkpoint's, kept because
    instruction tuning taught the model that format), rather than the graph's."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and USER not in template


_SENTINEL = "\x00request\x00"
_TEMPLATE_PARTS: dict[tuple, tuple[str, str]] = {}


def template_parts(tokenizer) -> tuple[str, str]:
    """The text before and after the request when the tokenizer's own chat template renders a one-turn conversation
    with the generation prompt (without the BOS the tokenizer adds itself when it encodes)."""
    key = (tokenizer.chat_template, tokenizer.bos_token)
    if key not in _TEMPLATE_PARTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        before, after = text.split(_SENTINEL)
        bos = tokenizer.bos_token
        if bos and before.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
            before = before[len(bos) :]
        _TEMPLATE_PARTS[key] = (before, after)
    return _TEMPLATE_PARTS[key]


def format_prompt(prompt: str, tokenizer=None) -> str:
    """The text a policy is conditioned on; generation continues after the assistant token.

    With a tokenizer that has a chat template of its own (an instruction-tuned checkpoint), that template's format
    instead: the request as one user turn, then its generation prompt (SmolLM2's `<|im_start|>assistant\n`).
    """
    if tokenizer is not None and has_own_template(tokenizer):
        before, after = template_parts(tokenizer)
        return before + prompt.strip() + after
    return f"{USER}{prompt.strip()}{ASSISTANT}"


def base_prompt(prompt: str, tokenizer) -> str:
    """How a base model is asked: an instruction-tuned checkpoint in its own chat format, a model that only continues
    text with the bare request (`raw_prompt`), as in the source."""
    return format_prompt(prompt, tokenizer) if has_own_template(tokenizer) else raw_prompt(prompt)


def raw_prompt(prompt: str) -> str:
    """How a base model is asked, as in the source: the bare request, then a new line."""
    return prompt.strip() + "\n"
