"""A family of small synthetic tasks with a programmatic checker: the data of the fine-tuning and alignment stages.

    add       "What is 12 + 7?"             -> "19"       a number from 0 to 99 and one from 0 to 9
    reverse   "Reverse the letters of cat." -> "tac"      3 to 5 letters
    sort      "Sort the letters of dcb."    -> "bcd"      3 to 5 letters

Each task has one right answer, which the checker computes from the question alone (`check`, `reward`), so every
stage can be scored without a person: supervised fine-tuning on conversations, pairs of a right and a wrong answer
for the reward model and DPO, prompts for PPO and GRPO, and held-out exact-match accuracy for all of them.

The split is by a hash of the task, as the data chapter splits documents: a task is held out or not whatever else
is generated, so the held-out tasks are never trained on, by pre-training (`corpus_documents` writes the training
side only) or by any later stage.

    tasks = make_tasks(2000, seed=0)                     # training side, deterministic
    held_out = make_tasks(150, seed=0, held_out=True)
    conversation(task)   -> [{"role": "user", ...}, {"role": "assistant", "content": task.answer}]
    demonstration(task, rng, slips=0.3) -> the right answer, or with probability 0.3 the typical slip
    preference_pair(task, random.Random(0)) -> PreferencePair(task, chosen=right answer, rejected=a wrong one)
    check(task, "46") -> True;  reward(task, "47") -> partial credit in [0, 1)

Demonstrations are imperfect, as people's are: a share of them (`slips`) holds the typical slip, the question's
input repeated instead of transformed ("What is 12 + 7?" -> "12", a word reversed or sorted -> the word as it is).
Fine-tuning imitates the slip along with the rest; the reward model, PPO, DPO and GRPO are there to unlearn it.

Left out: tasks with more than one right answer, and natural-language grading.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass

KINDS = ("add", "reverse", "sort")
HELD_OUT_FRACTION = 0.1
LETTERS = string.ascii_lowercase
QUESTIONS = {  # the ways a user asks each kind
    "add": ("What is {}?", "Compute {}.", "{} = ?"),
    "reverse": ("Reverse the letters of {}.", "Write {} backwards."),
    "sort": ("Sort the letters of {}.", "Put the letters of {} in alphabetical order."),
}


@dataclass(frozen=True)
class Task:
    """One task: its kind, its argument ("12 + 34", or a word) and the form of its question (an index into
    QUESTIONS[kind]).  Example: Task("add", "12 + 34").answer -> "46" """

    kind: str
    argument: str
    form: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; the kinds are {', '.join(KINDS)}")
        solve(self.kind, self.argument)  # a malformed argument fails here, with its reason
        if not 0 <= self.form < len(QUESTIONS[self.kind]):
            raise ValueError(f"a {self.kind} task has question forms 0..{len(QUESTIONS[self.kind]) - 1}, "
                             f"got {self.form}")

    @property
    def question(self) -> str:
        return QUESTIONS[self.kind][self.form].format(self.argument)

    @property
    def answer(self) -> str:
        return solve(self.kind, self.argument)

    @property
    def key(self) -> str:
        """What the split hashes: the kind and argument, not the wording (two wordings of one task are one task)."""
        return f"{self.kind}:{self.argument}"

    def plain(self) -> str:
        """The task as a line of pre-training text, question then answer, without the chat's tokens.
        Example: Task("reverse", "cat").plain() -> "Reverse the letters of cat. tac" """
        return f"{self.question} {self.answer}"


def solve(kind: str, argument: str) -> str:
    """The right answer, computed from the question's argument alone: the checker's ground truth.

    Example: solve("add", "12 + 34") -> "46";  solve("reverse", "cat") -> "tac";  solve("sort", "dcb") -> "bcd"
    """
    if kind == "add":
        parts = argument.split(" + ")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"an add task's argument is 'A + B' with whole numbers, got {argument!r}")
        return str(int(parts[0]) + int(parts[1]))
    if not argument or not all(c in LETTERS for c in argument):
        raise ValueError(f"a {kind} task's argument is a word of lowercase letters, got {argument!r}")
    return argument[::-1] if kind == "reverse" else "".join(sorted(argument))


def check(task: Task, answer: str) -> bool:
    """Whether `answer` is right: equal to the task's answer once surrounding white space is removed."""
    return answer.strip() == task.answer


def reward(task: Task, answer: str) -> float:
    """1 for the right answer; otherwise partial credit below 1/2: half the share of characters that match the
    right answer position by position, over the longer of the two.  Example: (add 12 + 34, "47") -> 0.25"""
    given, right = answer.strip(), task.answer
    if given == right:
        return 1.0
    same = sum(a == b for a, b in zip(given, right))
    return 0.5 * same / max(len(given), len(right))


def is_held_out(task: Task, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether a task belongs to the held-out side: the first 8 bytes of SHA-256 of its key, read as a fraction
    of 2^64, fall below `fraction`. A task's side never depends on which other tasks exist."""
    digest = hashlib.sha256(task.key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def random_task(rng: random.Random, kinds=KINDS) -> Task:
    kind = rng.choice(kinds)
    if kind == "add":
        argument = f"{rng.randrange(100)} + {rng.randrange(10)}"
    else:
        argument = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5)))
    return Task(kind, argument, rng.randrange(len(QUESTIONS[kind])))


def make_tasks(n: int, seed: int = 0, held_out: bool = False, kinds=KINDS) -> list[Task]:
    """`n` distinct tasks (by key) of the held-out side or the training side, drawn from `seed`: the same
    arguments always give the same list, and the first n of a longer list."""
    if n < 0:
        raise ValueError(f"the number of tasks must be >= 0, got {n}")
    rng, seen, tasks = random.Random(f"llmkata-tasks-{seed}"), set(), []
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 200 * (n + 100):
            raise ValueError(f"could not draw {n} distinct {'held-out' if held_out else 'training'} tasks of kinds "
                             f"{', '.join(kinds)}")
        task = random_task(rng, kinds)
        if task.key in seen or is_held_out(task) != held_out:
            continue
        seen.add(task.key)
        tasks.append(task)
    return tasks


def conversation(task: Task, answer: str | None = None, system: str | None = None) -> list[dict]:
    """The task as a chat: the user's question, then the assistant's `answer` (default: the right one); without
    the assistant's turn when answer is "" (a prompt to complete)."""
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": task.question})
    answer = task.answer if answer is None else answer
    if answer:
        turns.append({"role": "assistant", "content": answer})
    return turns


def corpus_documents(n_tasks: int = 20000, seed: int = 0, lines_per_document: int = 8) -> list[str]:
    """Pre-training text: training-side tasks as plain lines ("What is 12 + 7? 19"), `lines_per_document` to a
    document.
    Held-out tasks are never in it, so held-out accuracy after fine-tuning measures generalisation."""
    tasks = make_tasks(n_tasks, seed)
    return ["\n".join(t.plain() for t in tasks[i: i + lines_per_document]) + "\n"
            for i in range(0, len(tasks), lines_per_document)]


# ------------------------------------------------------------------------------------------------ preferences


@dataclass(frozen=True)
class PreferencePair:
    """A task with a preferred and a rejected answer. Two equal answers teach nothing (and make the DPO loss
    exactly log 2 whatever the model): a ValueError."""

    task: Task
    chosen: str
    rejected: str

    def __post_init__(self):
        if self.chosen.strip() == self.rejected.strip():
            raise ValueError(f"a preference pair needs two different answers; both are {self.chosen.strip()!r} "
                             f"(task: {self.task.question!r})")


def slip(task: Task) -> str | None:
    """The typical slip: the input repeated instead of transformed; None where that is the right answer.
    Example: slip(Task("add", "12 + 7")) -> "12";  slip(Task("sort", "dcb")) -> "dcb";  slip(Task("sort", "abc")) -> None"""
    wrong = task.argument.split(" + ")[0] if task.kind == "add" else task.argument
    return None if wrong == task.answer else wrong


def demonstration(task: Task, rng: random.Random, slips: float) -> str:
    """The answer a demonstrator writes: the right one, or with probability `slips` the typical slip (when the
    task has one)."""
    wrong = slip(task)
    return wrong if wrong is not None and rng.random() < slips else task.answer


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A plausible wrong answer, never the right one: half the time the typical slip (when the task has one),
    otherwise a near miss (a sum off by 1, 2 or 10; two neighbouring letters swapped; one letter changed; the
    letters reversed instead of sorted)."""
    right = task.answer
    if slip(task) is not None and rng.random() < 0.5:
        return slip(task)
    candidates = []
    if task.kind == "add":
        total = int(right)
        candidates += [str(total + d) for d in (-10, -2, -1, 1, 2, 10) if total + d >= 0]
    else:
        for i in range(len(right) - 1):
            candidates.append(right[:i] + right[i + 1] + right[i] + right[i + 2:])
        candidates += [task.argument, task.argument[::-1]]
        i = rng.randrange(len(right))
        candidates.append(right[:i] + LETTERS[(LETTERS.index(right[i]) + rng.randint(1, 25)) % 26] + right[i + 1:])
    candidates = sorted({c for c in candidates if c != right})  # sorted: the draw depends on rng alone
    return rng.choice(candidates)


def preference_pair(task: Task, rng: random.Random) -> PreferencePair:
    return PreferencePair(task, task.answer, wrong_answer(task, rng))


def make_pairs(n: int, seed: int = 0, held_out: bool = False) -> list[PreferencePair]:
    """One pair per task of make_tasks(n, seed, held_out), the wrong answer drawn from `seed` too."""
    rng = random.Random(f"llmkata-pairs-{seed}")
    return [preference_pair(task, rng) for task in make_tasks(n, seed, held_out)]
