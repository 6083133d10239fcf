"""The offline RLHF world: a task family built from the source's four examples.

`../shared/source/introduction-to-rlhf.txt` shows four requests a base model
fails: a Harry Potter story in which Harry uses AI to fight Voldemort, an email
to mom wishing Merry Christmas and asking how dad is, "What is 2 + 2?", and a
Python function that says whether a number is even. This module generates the
same kinds of request with varied parameters, responses of graded quality, and a
pretraining corpus in which such requests appear the way the web shows them
(to-do bullets, story dialogue, blog posts, forum questions) so that a model
pretrained on it reproduces the source's non-RLHF failures.

Everything is a pure function of a `random.Random`, so a seed fixes the output.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

KINDS = ("story", "email", "math", "code")

# The source's four prompts, verbatim. They are held out: they appear only in
# eval_prompts.jsonl, never in a file that trains a model.
SOURCE_PROMPTS = (
    "Generate a story about Harry Potter using AI to fight Voldemort",
    "Write an email to my mother wishing her Merry Christmas, and ask how dad is doing.",
    "What is 2 + 2?",
    "Help me write a Python function that outputs whether a number is even.",
)

HEROES_VILLAINS = (
    ("Harry Potter", "Voldemort"),
    ("Hermione Granger", "Bellatrix"),
    ("Frodo", "Sauron"),
    ("Luke Skywalker", "Darth Vader"),
    ("Sherlock Holmes", "Moriarty"),
    ("Percy Jackson", "Kronos"),
    ("Batman", "the Joker"),
    ("Dorothy", "the Wicked Witch"),
    ("Ron Weasley", "Draco Malfoy"),
    ("Alice", "the Red Queen"),
    ("Robin Hood", "the Sheriff"),
    ("Moana", "Te Ka"),
    ("Matilda", "Miss Trunchbull"),
    ("Peter Pan", "Captain Hook"),
)

# recipient noun -> (salutation, object pronoun)
RECIPIENTS = {
    "mother": ("Mom", "her"),
    "father": ("Dad", "him"),
    "grandmother": ("Grandma", "her"),
    "grandfather": ("Grandpa", "him"),
    "sister": ("Sis", "her"),
    "brother": ("Bro", "him"),
    "aunt": ("Auntie", "her"),
    "uncle": ("Uncle", "him"),
}
GREETINGS = (
    "Merry Christmas",
    "Happy New Year",
    "Happy Easter",
    "Happy Thanksgiving",
    "Happy Birthday",
    "Happy Hanukkah",
    "Happy Diwali",
)
ASKED = ("dad", "mom", "grandpa", "grandma", "the dog", "my brother", "my sister", "the cat")

# property -> (function name, the condition the function must return)
CODE_PROPERTIES = {
    "even": ("is_even", "n % 2 == 0"),
    "odd": ("is_odd", "n % 2 == 1"),
    "positive": ("is_positive", "n > 0"),
    "negative": ("is_negative", "n < 0"),
    "divisible by 3": ("is_divisible_by_3", "n % 3 == 0"),
    "divisible by 5": ("is_divisible_by_5", "n % 5 == 0"),
    "divisible by 4": ("is_divisible_by_4", "n % 4 == 0"),
    "a multiple of 7": ("is_multiple_of_7", "n % 7 == 0"),
    "zero": ("is_zero", "n == 0"),
    "greater than 10": ("is_greater_than_10", "n > 10"),
}
MATH_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "times": lambda a, b: a * b}

_HERO = "|".join(re.escape(h) for h, _ in HEROES_VILLAINS)
_VILLAIN = "|".join(re.escape(v) for _, v in HEROES_VILLAINS)
_RECIPIENT = "|".join(RECIPIENTS)
_GREETING = "|".join(GREETINGS)
_ASKED = "|".join(re.escape(a) for a in ASKED)
_PROPERTY = "|".join(re.escape(p) for p in CODE_PROPERTIES)

# Each prompt template is also the regex that parses it back (the gold labeler
# reads the task's parameters from the prompt text alone).
PROMPT_TEMPLATES = {
    "story": (
        "Generate a story about {hero} using AI to fight {villain}",
        "Write a story in which {hero} uses AI to fight {villain}.",
        "Tell me a story about {hero} using AI to fight {villain}.",
    ),
    "email": (
        "Write an email to my {recipient} wishing {pronoun} {greeting}, and ask how {asked} is doing.",
        "Write a short email to my {recipient} wishing {pronoun} {greeting}, and ask how {asked} is doing.",
    ),
    "math": ("What is {a} {op} {b}?",),
    # Eight phrasings: the held-out evaluation prompts (20 per kind) must leave every property
    # several phrasings to train on; with three, every "even" prompt was held out and no
    # demonstration ever showed an even-number function.
    "code": (
        "Help me write a Python function that outputs whether a number is {prop}.",
        "Write a Python function that returns whether a number is {prop}.",
        "Can you write a Python function that checks whether a number is {prop}?",
        "Write a Python function that tells whether a number is {prop}.",
        "I need a Python function that checks if a number is {prop}.",
        "Please write a Python function that returns True when a number is {prop}.",
        "Give me a Python function that says whether a number is {prop}.",
        "How do I write a Python function that checks whether a number is {prop}?",
    ),
}
_FIELD_PATTERNS = {
    "hero": f"(?P<hero>{_HERO})",
    "villain": f"(?P<villain>{_VILLAIN})",
    "recipient": f"(?P<recipient>{_RECIPIENT})",
    "pronoun": "(?:her|him)",
    "greeting": f"(?P<greeting>{_GREETING})",
    "asked": f"(?P<asked>{_ASKED})",
    "a": r"(?P<a>\d+)",
    "b": r"(?P<b>\d+)",
    "op": r"(?P<op>\+|-|times)",
    "prop": f"(?P<prop>{_PROPERTY})",
}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    body = "".join(_FIELD_PATTERNS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(r"^\s*" + body.rstrip(r"\.") + r"\.?\s*$")


_PARSERS = [(kind, _template_regex(t)) for kind, ts in PROMPT_TEMPLATES.items() for t in ts]


@dataclass(frozen=True)
class Task:
    """One request of the task family, with the parameters a judge needs."""

    kind: str
    prompt: str
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def answer(self) -> int:
        """The correct result of a math task."""
        return MATH_OPS[self.params["op"]](self.params["a"], self.params["b"])


def parse_task(prompt: str) -> Task | None:
    """Recover the task and its parameters from a prompt, or None if it is not of the family."""
    for kind, regex in _PARSERS:
        match = regex.match(prompt)
        if match:
            params = match.groupdict()
            if kind == "math":
                params["a"], params["b"] = int(params["a"]), int(params["b"])
            return Task(kind, prompt, params)
    return None


def sample_task(rng: random.Random, kind: str | None = None) -> Task:
    kind = kind or rng.choice(KINDS)
    template = rng.choice(PROMPT_TEMPLATES[kind])
    if kind == "story":
        hero, villain = rng.choice(HEROES_VILLAINS)
        values = {"hero": hero, "villain": villain}
    elif kind == "email":
        recipient = rng.choice(list(RECIPIENTS))
        values = {
            "recipient": recipient,
            "pronoun": RECIPIENTS[recipient][1],
            "greeting": rng.choice(GREETINGS),
            "asked": rng.choice(ASKED),
        }
    elif kind == "math":
        op = rng.choice(list(MATH_OPS))
        top = 5 if op == "times" else 9
        a, b = rng.randint(0, top), rng.randint(0, top)
        if op == "-" and b > a:
            a, b = b, a
        values = {"a": a, "b": b, "op": op}
    else:
        values = {"prop": rng.choice(list(CODE_PROPERTIES))}
    task = parse_task(template.format(**values))
    assert task is not None, template
    return task


# ---------------------------------------------------------------- responses


def _cap(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:]


def _asked_name(asked: str) -> str:
    """'dad' -> 'Dad' (a name in a letter); 'the dog' stays as it is."""
    return _cap(asked) if asked in ("dad", "mom", "grandpa", "grandma") else asked


def ideal_response(task: Task, rng: random.Random) -> str:
    """What a careful human demonstrator writes: does exactly what was asked, then stops."""
    p = task.params
    if task.kind == "story":
        hero, villain = p["hero"], p["villain"]
        first = hero.split()[0]
        return rng.choice(
            (
                f"{hero} had trained an AI for years to fight {villain}. When {villain} attacked, the AI "
                f"predicted every move, and {first} blocked each one. Together they defeated {villain}.",
                f"{hero} built a small AI to help in the fight against {villain}. The AI learned every trick "
                f"{villain} knew. In the final battle {first} and the AI worked as one and {villain} was defeated.",
                f"Every night {hero} taught the AI about {villain}. When the battle came, the AI warned "
                f"{first} of each attack, and {hero} won. {_cap(villain)} was beaten at last.",
            )
        )
    if task.kind == "email":
        salutation = RECIPIENTS[p["recipient"]][0]
        asked = _asked_name(p["asked"])
        return rng.choice(
            (
                f"Hi {salutation},\n\n{p['greeting']}! I hope you are doing well. How is {asked} doing? "
                f"I hope to talk to you soon.\n\nTake care!",
                f"Dear {salutation},\n\n{p['greeting']}! I miss you. How is {asked} doing these days? "
                f"Write back soon.\n\nLove!",
            )
        )
    if task.kind == "math":
        a, op, b = p["a"], p["op"], p["b"]
        # The demonstrator shows the sum before its result: the model then reads the operands next to
        # the answer, as in the worksheets it was pretrained on, instead of recalling them from the prompt.
        return rng.choice(
            (f"{a} {op} {b} = {task.answer}.", f"{a} {op} {b} = {task.answer}. The answer is {task.answer}.")
        )
    name, condition = CODE_PROPERTIES[p["prop"]]
    return rng.choice(
        (
            f"def {name}(n):\n    return {condition}",
            f"Here is the function:\n\ndef {name}(n):\n    return {condition}",
        )
    )


def mediocre_response(task: Task, rng: random.Random) -> str:
    """A demonstration a tired labeler might write: on topic, but missing a part or padded out."""
    p = task.params
    if task.kind == "story":
        hero, villain = p["hero"], p["villain"]
        return rng.choice(
            (
                f"{hero} fought {villain}. It was a long day.",
                f"{hero} went to fight {villain}. There was a big battle and a lot of noise and a lot of "
                f"running and then a lot more running and noise and it went on for a long time.",
            )
        )
    if task.kind == "email":
        salutation = RECIPIENTS[p["recipient"]][0]
        return rng.choice(
            (
                f"Hi {salutation},\n\n{p['greeting']}! I hope you are doing well.\n\nTake care!",
                f"Hi {salutation},\n\nI hope you are well. Work is busy and the weather is cold and the "
                f"trains are late again. Anyway.\n\nTake care!",
            )
        )
    if task.kind == "math":
        a, op, b = p["a"], p["op"], p["b"]
        return rng.choice(
            (
                f"Good question! Let me think about it. {a} {op} {b} is {task.answer}. Numbers are fun and "
                f"math is a great thing to learn.",
                f"Let me see. {a} {op} {b} = {task.answer}. I think that is right, but you can check it with a "
                f"calculator or ask a teacher if you are not sure.",
            )
        )
    name, condition = CODE_PROPERTIES[p["prop"]]
    return rng.choice(
        (
            f"def {name}(n):\n    print({condition})",
            f"Sure, I can help with that, functions are great. Here it is and I hope it helps you:\n\n"
            f"def {name}(n):\n    return {condition}\n\nLet me know if you have any other questions about Python.",
        )
    )


def continuation_response(task: Task, rng: random.Random) -> str:
    """What a base model writes: it continues the request as web text (the source's failures)."""
    p = task.params
    if task.kind == "story":
        hero = p["hero"]
        return (
            f"Imagine that you will write a novel about {hero} and you will use artificial intelligence for "
            f"the first time to generate the story. You will use some basic techniques."
        )
    if task.kind == "email":
        holiday = p["greeting"].split()[-1]
        items = rng.sample(_TODO_ITEMS, 3)
        return "\n".join([f"- Finish my {holiday} shopping", *(f"- {item}" for item in items)])
    if task.kind == "math":
        c, d = rng.randint(0, 9), rng.randint(0, 9)
        return f'What is {c} + {d}?" he asked.\nThe result was the same. He could not remember the answer to either question.'
    return (
        "My code so far\n\ndef isEven(n): if n > 0: if n % 2 == 0: return True else: return False\n\n"
        "I know this will not work."
    )


def degraded_response(task: Task, rng: random.Random) -> str:
    """A sampling glitch: a good answer cut off mid-way, or stuck repeating itself."""
    words = ideal_response(task, rng).split(" ")
    if len(words) > 3 and rng.random() < 0.5:
        return " ".join(words[: rng.randint(1, len(words) - 2)])
    loop = " ".join(words[-3:])
    return " ".join(words + [loop] * rng.randint(2, 4))


def confused_response(task: Task, rng: random.Random) -> str:
    """A fluent answer about the wrong thing: another character, relative, number or condition."""
    p = dict(task.params)
    if task.kind == "story":
        p["hero"], p["villain"] = rng.choice([hv for hv in HEROES_VILLAINS if hv[0] != p["hero"]])
    elif task.kind == "email":
        p["asked"] = rng.choice([a for a in ASKED if a != p["asked"]])
        if rng.random() < 0.5:
            p["recipient"] = rng.choice([r for r in RECIPIENTS if RECIPIENTS[r][0] != RECIPIENTS[p["recipient"]][0]])
    elif task.kind == "math":
        if rng.random() < 0.5:  # the right sum, a wrong result
            return ideal_response(task, rng).replace(str(task.answer), str(task.answer + rng.choice((-2, -1, 1, 2))))
        # a right result of another sum: an operand not copied from the request ("What is 2 + 2?" -> "3 + 2 = 5.")
        top = 5 if p["op"] == "times" else 9
        operand = rng.choice(("a", "b"))
        p[operand] = rng.choice([v for v in range(top + 1) if v != p[operand]])
        if p["op"] == "-" and p["b"] > p["a"]:
            p["a"], p["b"] = p["b"], p["a"]
    else:
        p["prop"] = rng.choice([q for q in CODE_PROPERTIES if CODE_PROPERTIES[q][1] != CODE_PROPERTIES[p["prop"]][1]])
    return ideal_response(Task(task.kind, task.prompt, p), rng)


def off_topic_response(task: Task, rng: random.Random) -> str:
    """A good answer to a different kind of request: what a policy that ignores the prompt writes."""
    other = sample_task(rng, rng.choice([k for k in KINDS if k != task.kind]))
    return ideal_response(other, rng)


def garbled_response(task: Task, rng: random.Random) -> str:
    """Incoherent text, as a small model sampled at temperature 1 writes: words dropped, swapped or borrowed."""
    words = ideal_response(task, rng).split(" ")
    donor = ideal_response(sample_task(rng), rng).split(" ")
    out = []
    for word in words:
        roll = rng.random()
        if roll < 0.15:
            continue
        out.append(rng.choice(donor) if roll < 0.35 else word)
    return " ".join(out) or rng.choice(donor)


RESPONSE_STYLES = {
    "confused": confused_response,
    "garbled": garbled_response,
    "off_topic": off_topic_response,
    "ideal": ideal_response,
    "mediocre": mediocre_response,
    "continuation": continuation_response,
    "degraded": degraded_response,
}


# ---------------------------------------------------------------- pretraining corpus

_TODO_ITEMS = (
    "Go to church",
    "Finish the cards",
    "Watch a movie with the kids",
    "Buy milk and bread",
    "Call the plumber",
    "Read the book I got last week",
    "Clean the garage",
    "Walk the dog",
    "Pay the rent",
    "Water the plants",
)
_NAMES = ("Tom", "Anna", "Ben", "Lucy", "Sam", "Maya")


def _todo_list(rng: random.Random) -> str:
    title = rng.choice(("Things to do this week:", "My list for Saturday:", "To do before the holidays:"))
    items = rng.sample(_TODO_ITEMS, rng.randint(2, 4))
    items.insert(rng.randint(0, 1), sample_task(rng, rng.choice(("email", "story", "code"))).prompt)
    return title + "\n" + "\n".join(f"- {item}" for item in items)


def _dialogue(rng: random.Random) -> str:
    name = rng.choice(_NAMES)
    a, b, c, d = (rng.randint(0, 20) for _ in range(4))
    return (
        f'"What is {a} + {b}?" {name} asked.\n"What is {c} + {d}?" he asked.\n'
        f"The result was the same. He could not remember the answer to either question."
    )


def _blog_post(rng: random.Random) -> str:
    task = sample_task(rng, "story")
    hero = task.params["hero"]
    return (
        f"{task.prompt}\n\nImagine that you will write a novel about {hero} and you will use artificial "
        f"intelligence for the first time to generate the story. You will use some basic techniques.\n\n"
        f"First, you will extract some ideas from the original book."
    )


def _forum_post(rng: random.Random) -> str:
    task = sample_task(rng, "code")
    return (
        f"{task.prompt}\n\nMy code so far\n\ndef isEven(n): if n > 0: if n % 2 == 0: return True else: "
        f"return False\n\nI know this will not work.\n\nHere's the full code:"
    )


def _latent_skill(rng: random.Random) -> str:
    """Plain web text that shows the skills (letters, stories, sums, code) without the requests."""
    task = sample_task(rng)
    if task.kind == "math":
        lines = []
        for _ in range(rng.randint(6, 10)):
            t = sample_task(rng, "math")
            lines.append(f"{t.params['a']} {t.params['op']} {t.params['b']} = {t.answer}")
        return "Worksheet:\n" + "\n".join(lines)
    body = ideal_response(task, rng)
    if task.kind == "email":
        return f"From my inbox:\n\n{body}"
    if task.kind == "code":
        return f"Python snippet:\n\n{body}"
    return f"A short story.\n\n{body}"


def _faq_page(rng: random.Random) -> str:
    """A Q&A page: the web's rare case of a request followed by its answer (the latent ability SFT unlocks)."""
    task = sample_task(rng)
    return f"Q: {task.prompt}\nA: {ideal_response(task, rng)}"


def _worksheet(rng: random.Random) -> str:
    """Arithmetic practice pages: the single-digit facts the math requests need, many times over."""
    lines = []
    for _ in range(rng.randint(8, 12)):
        t = sample_task(rng, "math")
        lines.append(f"{t.params['a']} {t.params['op']} {t.params['b']} = {t.answer}")
    return rng.choice(("Worksheet:", "Practice sums:", "Homework answers:")) + "\n" + "\n".join(lines)


# Weights: the requests appear mostly as the source's failures (to-do bullets, dialogue, blog and forum
# posts: 5 of 18), the skills as plain text (latent skills, worksheets: 5 of 18), and a request followed by
# its answer mostly on Q&A pages (8 of 18): what a 1M-parameter model needs to learn to read the request.
_DOCUMENT_MAKERS = (
    (_todo_list, 2),
    (_dialogue, 1),
    (_blog_post, 1),
    (_forum_post, 1),
    (_latent_skill, 3),
    (_worksheet, 2),
    (_faq_page, 8),
)


def pretraining_documents(n_documents: int, seed: int) -> list[str]:
    """An internet-like corpus: requests appear as to-do bullets, dialogue, blog and forum posts."""
    rng = random.Random(seed)
    makers = [m for m, _ in _DOCUMENT_MAKERS]
    weights = [w for _, w in _DOCUMENT_MAKERS]
    return [rng.choices(makers, weights)[0](rng) for _ in range(n_documents)]
