"""A world of the parallel chapter's spec, inside the grading sandbox: the ranks load the submission, so they run
here, and the grader only reads plain data from this process (llmkata.wire). It decides nothing.

    python -I -m llmkata.world_host IMPL SIZE FD     # stdin: the grader's tasks; FD: the results, as data

It serves the spec's own world (spec/worlds.py, `World`) to a grader in another process: each request is a task
(pickled by the grader, which the sandbox trusts) that every rank runs; the answer is the ranks' results by rank,
or the error a rank raised (its class names, its message with the rank's traceback), encoded as data only.
"""

from __future__ import annotations

import os
import pickle
import sys

from llmkata import wire


def main() -> None:
    choice, size, answers = sys.argv[1], int(sys.argv[2]), os.fdopen(int(sys.argv[3]), "wb")
    requests = sys.stdin.buffer
    sys.stdout = sys.stderr  # what the submission prints goes to the captured, capped stderr
    os.dup2(2, 1)
    import llmkata.spec
    sys.modules.setdefault("spec", llmkata.spec)  # the tasks are the spec's, pickled by name
    from llmkata.spec import worlds
    from llmkata.spec.impl import load
    from llmkata.worker import describe

    world = None
    while True:
        try:
            request = pickle.loads(wire.read_frame(requests))
        except EOFError:
            break
        if request is None:
            break
        task, args = request
        buffers: list[bytes] = []
        try:
            if world is None or not world.alive:
                world = worlds.World(load(choice), size)
            header = {"ok": wire.encode_plain(world.run(task, *args), buffers)}
        except BaseException as error:  # noqa: BLE001 - everything goes back to the grader, as data
            notes = "\n".join(str(note) for note in getattr(error, "__notes__", []))
            names, message, *where = describe(error)
            header = {"raise": [names, f"{message}\n{notes}".strip()[:20000]]}
            buffers = []
        wire.write_data(answers, header, buffers)
    if world is not None:
        world.close()


if __name__ == "__main__":
    main()
