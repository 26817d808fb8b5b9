"""The goal wording (synthesizer=goal): a request in plain words that names no tool, server, parameter
key or step and holds no JSON path or key=value; given inputs stated as values, passed values described,
answer fields with meaningful snake_case names; the last structural check; the hook in variant_task."""

import json
import random
import re
from pathlib import Path

import pytest
import yaml

from firefly_exp import PROJECT_ROOT, synthesizer
from firefly_exp.answers import answer_fields
from firefly_exp.seeding import rng_for
from firefly_exp.settings import SynthesizerSettings
from firefly_exp.synthesizer import goal
from firefly_exp.synthesizer.fields import chain_passes, task_variants

# real tool rows of the default servers (description, input schema), as the servers stage recorded them
REAL = {r["tool"]: r for r in json.loads((Path(__file__).parent / "real_tool_rows.json").read_text())}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
JSON_PATH = re.compile(r"\[\d+\]|\b[A-Za-z_]\w*\.\d+\b|\b\d+\.[A-Za-z_]\w*")


def _schema(**props) -> str:
    return json.dumps({"type": "object", "properties": props})


# a small fixture chain on a made-up server: list the products, then look up the stock of the second one
FIXTURE_TOOLS = {
    "shop/list_products": {"tool": "shop/list_products", "server": "shop", "read_only": True, "volatile": False,
                           "description": "List all products in the catalog.", "input_schema": _schema()},
    "shop/get_stock": {"tool": "shop/get_stock", "server": "shop", "read_only": True, "volatile": False,
                       "description": "Gets the stock level of a product in a warehouse.",
                       "input_schema": _schema(product_name={"type": "string", "description": "Name of the product"},
                                               warehouseId={"type": "string", "title": "Warehouse Id"})},
}
PRODUCTS = [{"name": "lamp", "price": 12}, {"name": "desk", "price": 80}, {"name": "chair", "price": 45}]
STOCK = {"product": "desk", "in_stock": 7, "reorder_level": 3, "warehouse_city": "Oslo"}


def _call(step, tool, arguments, sources, value):
    server, name = tool.split("/")
    return {"episode": "ep", "seq": step, "step": step, "server": server, "tool": name, "arguments": arguments,
            "arg_sources": sources, "content": [{"type": "text", "text": json.dumps(value)}], "structured": None,
            "is_error": False, "error_kind": None, "fingerprint": "seed"}


def fixture_chain():
    return [_call(0, "shop/list_products", {}, {}, PRODUCTS),
            _call(1, "shop/get_stock", {"product_name": "desk", "warehouseId": "north-7"},
                  {"product_name": "edge:0:1.name", "warehouseId": "hint"}, STOCK)]


def real_chain():
    """mcp-sqlite's list_tables, then sqlite's describe_table of the first table (recorded calls)."""
    return [_call(0, "mcp-sqlite/list_tables", {}, {}, [{"name": "customers"}, {"name": "products"}]),
            _call(1, "sqlite/describe_table", {"table_name": "customers"}, {"table_name": "edge:0:0.name"},
                  [{"cid": 0, "name": "id", "type": "INTEGER", "notnull": 0, "pk": 1},
                   {"cid": 1, "name": "name", "type": "TEXT", "notnull": 1, "pk": 0},
                   {"cid": 2, "name": "city", "type": "TEXT", "notnull": 0, "pk": 0}])]


def _goal_task(gold, tools, picks, seed=0):
    spec, answer, _ = goal.goal_spec(picks, gold, tools)
    return goal.goal_question(gold, tools, spec, random.Random(seed)), spec, answer


def _assert_plain(question, gold, tools, spec):
    """No offered tool or server, no parameter key, no step, no JSON path, no '=' (answer keys aside)."""
    body = question
    for name in spec:
        body = body.replace(json.dumps(name), " ")
    tokens = {t.lower() for t in re.findall(r"[A-Za-z0-9_\-]+", body)}
    servers = {c["server"] for c in gold}
    offered = servers | {t.split("/")[1] for t in tools if t.split("/")[0] in servers}
    identifiers = {n for n in offered if re.search(r"[_\-\d]|[a-z][A-Z]", n)}
    assert not {n.lower() for n in identifiers} & tokens, question
    for c in gold:
        for key in goal.properties(tools[f"{c['server']}/{c['tool']}"]):
            if re.search(r"[_\-\d]|[a-z][A-Z]", key):
                assert key.lower() not in tokens, (key, question)
            assert not re.search(rf"\b{key}\s*[=:]|[`'\"]{key}[`'\"]", body), (key, question)
    assert "step" not in question.lower()
    assert not JSON_PATH.search(question), question
    assert "=" not in question
    assert not goal.structure_leak(question, gold, tools, spec)


def test_fixture_chain_states_the_given_value_and_describes_the_passed_one():
    gold = fixture_chain()
    question, spec, answer = _goal_task(gold, FIXTURE_TOOLS, [(1, "in_stock", 7), (1, "warehouse_city", "Oslo"),
                                                              (0, "2.price", 45)])
    _assert_plain(question, gold, FIXTURE_TOOLS, spec)
    assert "north-7" in question                                    # the given input, as a value
    assert "desk" not in question                                   # the passed value is never stated ...
    assert "the name of the second product from listing all products" in question   # ... but described
    assert "Get the stock level of a product in a warehouse" in question   # the tool's own description
    assert list(spec) == ["in_stock", "warehouse_city", "third_product_price"]
    assert answer == {"in_stock": 7, "warehouse_city": "Oslo", "third_product_price": 45}
    for name, field in spec.items():
        assert f'"{name}" ({field["description"]})' in question   # quoted key, then its plain description
    assert spec["third_product_price"]["description"] == "the price of the third product from listing all products"


def test_real_rows_chain_and_single_calls():
    gold = real_chain()
    question, spec, _ = _goal_task(gold, REAL, [(0, "1.name", "products"), (1, "2.type", "TEXT"),
                                                (1, "1.notnull", 1)])
    _assert_plain(question, gold, REAL, spec)
    assert "customers" not in question
    assert "the name of the first table from listing all user tables in the database" in question
    assert "SQLite" not in question            # a product name that is also a server id is dropped
    assert list(spec) == ["second_table_name", "third_entry_type", "second_entry_notnull"]

    convert = [_call(0, "unit-converter/convert_volume", {"from_unit": "cup", "to_unit": "liter", "value": 250},
                     {"from_unit": "hint", "to_unit": "hint", "value": "hint"}, {"converted_value": 59.147})]
    question, spec, _ = _goal_task(convert, REAL, [(0, "converted_value", 59.147)], seed=3)
    _assert_plain(question, convert, REAL, spec)
    assert "Convert volume between units" in question
    for phrase in ("250", "cup as the source unit", "liter as the target unit"):
        assert phrase in question or phrase.replace(" as the ", " for the ") in question \
            or "the " + " is ".join(reversed(phrase.split(" as the "))) in question, (phrase, question)

    branches = [_call(0, "git/git_branch", {"branch_type": "local", "repo_path": "/sandbox/repo"},
                      {"branch_type": "hint", "repo_path": "hint"}, ["main", "feature/login"])]
    question, spec, _ = _goal_task(branches, REAL, [(0, "1", "feature/login")])
    _assert_plain(question, branches, REAL, spec)
    assert "List branches" in question   # "List Git branches", without the server's name
    assert "/sandbox/repo" in question and "local" in question
    assert "path to the repository" in question    # repo_path's description, "Git" dropped
    assert "branch type" in question                # branch_type's title: its description is no noun phrase

    expression = [_call(0, "calculator/calculate", {"expression": "(100 - 37) / 7"}, {"expression": "hint"}, 9.0)]
    question, spec, _ = _goal_task(expression, REAL, [(0, "", 9.0)])
    _assert_plain(question, expression, REAL, spec)
    assert "Evaluate the given expression" in question   # "Calculates/evaluates": the tool's name avoided
    assert list(spec) == ["expression_value"]


def test_answer_keys_are_meaningful_snake_case_with_descriptions():
    gold = real_chain()
    picks = [(0, "0.name", "customers"), (0, "1.name", "products"), (1, "0.name", "id"), (1, "0.cid", 0),
             (1, "", "raw")]
    spec, _, provenance = goal.goal_spec(picks, gold, REAL)
    assert len(spec) == len(set(spec)) == 5
    for name, field in spec.items():
        assert SNAKE.fullmatch(name) and not name.endswith("_result") and name != "result", name
        assert field["description"].startswith("the ") and len(field["description"].split()) >= 4
    assert list(spec)[:4] == ["first_table_name", "second_table_name", "first_entry_name", "first_entry_cid"]
    assert provenance["second_table_name"] == {"step": 0, "seq": 0, "path": "1.name", "tool": "mcp-sqlite/list_tables"}


def test_same_seed_same_question():
    gold, picks = real_chain(), [(0, "1.name", "products"), (1, "2.type", "TEXT")]
    spec, _, _ = goal.goal_spec(picks, gold, REAL)
    worded = {goal.goal_question(gold, REAL, spec, rng_for(0, "synth", "dag-1", 0)) for _ in range(3)}
    assert len(worded) == 1
    assert len({goal.goal_question(gold, REAL, spec, rng_for(s, "synth", "dag-1", 0)) for s in range(8)}) > 1


@pytest.mark.parametrize("text", ['Step 1: list the tables. Reply with "n" (the count).',
                                  "Convert with value=250. Reply.", "Use the value at [0].name.",
                                  "Read rows.2.name from the result.", "Call list_tables first.",
                                  "Use the shop server.", "Set product_name to the second one.",
                                  "Set `warehouseId` to north-7."])
def test_structure_leak_rejects_recipes(text):
    tools = {**FIXTURE_TOOLS, "shop/list_tables": {**FIXTURE_TOOLS["shop/list_products"], "tool": "shop/list_tables"}}
    assert goal.structure_leak(text, fixture_chain(), tools, {})


def test_structure_leak_allows_answer_keys_and_plain_words():
    spec = {"product_name": {"type": "string", "description": "the product's name"}}
    question = 'List the products in the shop catalog. Reply with "product_name" (the name of the first product).'
    assert not goal.structure_leak(question, fixture_chain(), FIXTURE_TOOLS, spec)
    assert goal.structure_leak(question.replace("the shop catalog", "the shop server"), fixture_chain(),
                               FIXTURE_TOOLS, spec)


def _settings(kind: str, **overrides) -> SynthesizerSettings:
    conf = yaml.safe_load((PROJECT_ROOT / "conf/synthesizer/template.yaml").read_text())
    if kind != "template":
        own = yaml.safe_load((PROJECT_ROOT / f"conf/synthesizer/{kind}.yaml").read_text())
        conf.update({k: v for k, v in own.items() if k != "defaults"})
    return SynthesizerSettings(**{**conf, "near_duplicate_threshold": None, **overrides})


def _variant_task(settings, gold, tools):
    maker = synthesizer._TaskMaker(tools, None, settings, 0)
    per_step = [answer_fields(c, False, settings.max_value_len, json.dumps([c["arguments"] for c in gold]))
                for c in gold]
    variants = task_variants(gold, [k for k, c in enumerate(per_step) if c], tools)
    return maker, maker.variant_task("dag-1", 0, gold, per_step, (*variants[0], 0))


def test_goal_kind_in_variant_task_asks_for_three_fields_and_counts_structure_leaks():
    maker, task = _variant_task(_settings("goal"), fixture_chain(), FIXTURE_TOOLS)
    assert task["synthesizer"] == "goal" and len(task["answer"]) >= 3
    assert all(not k.endswith("_result") and SNAKE.fullmatch(k) for k in task["answer"])
    assert [(p["from_step"], p["param"]) for p in task["chain"]] == [(0, "product_name")]
    _assert_plain(task["question"], fixture_chain(), FIXTURE_TOOLS, task["answer_schema"])
    assert "desk" not in task["question"] and "north-7" in task["question"]

    gold = fixture_chain()
    gold[1]["arguments"]["warehouseId"] = "zone=north"      # a given value with '=' cannot be worded
    maker, task = _variant_task(_settings("goal"), gold, FIXTURE_TOOLS)
    assert task is None and maker.rejected["goal_structure_leak"] == 1


def test_recipe_is_the_template_wording_under_its_own_name():
    _, template = _variant_task(_settings("template"), fixture_chain(), FIXTURE_TOOLS)
    _, recipe = _variant_task(_settings("recipe"), fixture_chain(), FIXTURE_TOOLS)
    assert template["question"] == recipe["question"] and template["answer"] == recipe["answer"]
    assert "Step 1" in template["question"] or "1. Run" in template["question"]
    assert (template["synthesizer"], recipe["synthesizer"]) == ("template", "recipe")
    assert chain_passes(fixture_chain()) == [(0, 1, "product_name", "desk")]


def test_default_experiment_synthesizes_goal_tasks_with_long_chains_first(config):
    """The default config asks goal questions; longest chains first; one-call tasks capped."""
    from firefly_exp.settings import load_settings

    s = load_settings(config()).synthesizer
    assert (s.kind, s.variant_order, s.single_call) == ("goal", "longest", "fallback")
    assert s.max_single_call_share is not None and s.max_single_call_share <= 0.2
    assert s.min_fields >= 3 and s.informative


def test_longest_order_asks_about_both_branches_of_a_fan_out_first():
    tools = {"s/list": {"read_only": True}, "s/a": {"read_only": True}, "s/b": {"read_only": True}}
    calls = [{"step": 0, "server": "s", "tool": "list", "is_error": False, "arg_sources": {}},
             {"step": 1, "server": "s", "tool": "a", "is_error": False, "arg_sources": {"x": "edge:0:0.name"}},
             {"step": 2, "server": "s", "tool": "b", "is_error": False, "arg_sources": {"y": "edge:0:1.name"}}]
    found = task_variants(calls, [0, 1, 2], tools)
    longest = task_variants(calls, [0, 1, 2], tools, order="longest")
    assert found[0] == ([2], [0, 2])                       # the latest answer call's own chain
    assert longest[0] == ([1, 2], [0, 1, 2])               # both branches, the whole DAG
    assert sorted(map(str, found)) == sorted(map(str, longest[1:]))   # nothing else lost or added
    lengths = [len(chain) for _, chain in longest]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("share", [0.0, 0.1, 0.2, 0.5])
def test_single_call_cap_keeps_every_chain_and_spreads_the_kept_single_calls(share):
    from collections import Counter

    from firefly_exp.synthesizer.verify import cap_single_calls

    rng = random.Random(7)
    tasks = []
    for i in range(60):
        n = rng.choice([1, 1, 2, 3])
        tool = rng.choice(["a", "b", "c", "d"]) if n == 1 else "a"
        tasks.append({"id": i, "gold_calls": [{"server": "s", "tool": tool}] * n})
    rejected = Counter()
    kept = cap_single_calls(tasks, share, rejected)
    single = [t for t in kept if len(t["gold_calls"]) == 1]
    assert [t for t in kept if len(t["gold_calls"]) > 1] == [t for t in tasks if len(t["gold_calls"]) > 1]
    assert len(single) / len(kept) <= share + 1e-9
    assert [t["id"] for t in kept] == sorted(t["id"] for t in kept)          # order kept
    assert rejected["single_call_cap"] == sum(len(t["gold_calls"]) == 1 for t in tasks) - len(single)
    # round-robin, tools the chains never use (b, c, d) first: "a" never kept more often than one of them,
    # unless that one had no more to give
    kept_by = Counter(t["gold_calls"][0]["tool"] for t in single)
    offered = Counter(t["gold_calls"][0]["tool"] for t in tasks if len(t["gold_calls"]) == 1)
    assert all(kept_by[x] >= kept_by["a"] or kept_by[x] == offered[x] for x in "bcd")


def test_a_tool_called_twice_is_told_apart_in_the_field_descriptions():
    """Two calls of one tool (a read before and after a write) answer differently: each field says which."""
    gold = [_call(0, "shop/list_products", {}, {}, PRODUCTS),
            _call(1, "shop/list_products", {}, {}, PRODUCTS[:2])]
    fields_, answer, _ = goal.goal_spec([(0, "2.name", "chair"), (1, "1.name", "desk")], gold, FIXTURE_TOOLS)
    descriptions = [f["description"] for f in fields_.values()]
    assert len(set(descriptions)) == 2
    assert descriptions[0].endswith("the first time") and descriptions[1].endswith("the second time")
    single, _, _ = goal.goal_spec([(0, "2.name", "chair")], gold[:1], FIXTURE_TOOLS)
    assert not next(iter(single.values()))["description"].endswith("time")
