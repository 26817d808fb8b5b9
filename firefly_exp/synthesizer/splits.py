"""The split strategies (``synthesizer.split``): each sets every task's ``split`` to ``train`` or
``test`` in place, from the run seed, so that what is held out is never seen in training.

    random             by DAG: the tasks of one trajectory never straddle train and test
    held_out_tools     by tool combination (the set of tools of the gold chain)
    held_out_servers   a task using any held-out server is test

A strategy is a function ``(tasks, test_fraction, seed) -> None``: ``synthesizer.split`` names one
here, or your own by its dotted path (``synthesizer.split=mypkg.splits.by_domain``). Every public
function of this module is a choice.
"""

from __future__ import annotations

from .. import sampler   # the module, not rng_for: every callable named here is a split choice


def random(tasks: list[dict], test_fraction: float, seed: int) -> None:
    """By DAG: each DAG is test with probability ``test_fraction``, and all its tasks with it."""
    for t in tasks:
        t["split"] = "test" if sampler.rng_for(seed, "split", t["dag_id"]).random() < test_fraction else "train"


def held_out_tools(tasks: list[dict], test_fraction: float, seed: int) -> None:
    """By tool combination (the set of tools of the gold chain): a combination is all train or all test."""
    for t in tasks:
        combo = sorted({f"{c['server']}/{c['tool']}" for c in t["gold_calls"]})
        t["split"] = "test" if sampler.rng_for(seed, "split-tools", *combo).random() < test_fraction else "train"


def held_out_servers(tasks: list[dict], test_fraction: float, seed: int) -> None:
    """``round(test_fraction * servers)`` servers (at least one) are held out; a task using any of them
    is test, so the test set needs servers never seen in training (one server is always left to
    train on: with a single server, every task is train).

    >>> ts = [{"dag_id": "d1", "gold_calls": [{"server": "a", "tool": "x"}]},
    ...       {"dag_id": "d2", "gold_calls": [{"server": "b", "tool": "y"}]}]
    >>> held_out_servers(ts, 0.5, 0); sorted(t["split"] for t in ts)
    ['test', 'train']
    """
    servers = sorted({c["server"] for t in tasks for c in t["gold_calls"]})
    rng = sampler.rng_for(seed, "split-servers")
    held = set(rng.sample(servers, min(len(servers), max(1, round(test_fraction * len(servers)))))) \
        if servers else set()
    if held and len(held) == len(servers):   # keep a server to train on
        held.discard(sorted(held)[0])
    for t in tasks:
        t["split"] = "test" if {c["server"] for c in t["gold_calls"]} & held else "train"
