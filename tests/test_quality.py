"""Task quality checks (firefly_exp/quality.py): each check on a recipe question that should trip it and a
goal question that should not, BM25 ranking on a tiny catalog, the rates per split, and the dataset card."""

import json

import pytest

from firefly_exp import dataset, quality

CATALOG = {
    "unit-converter/convert_volume": {"description": "Convert volume between units (cups, liters, gallons)",
                                      "read_only": True,
                                      "input_schema": json.dumps({"properties": {"value": {}, "from_unit": {},
                                                                                 "to_unit": {}}})},
    "unit-converter/convert_length": {"description": "Convert length between units (meters, feet, miles)",
                                      "read_only": True,
                                      "input_schema": json.dumps({"properties": {"value": {}, "from_unit": {},
                                                                                 "to_unit": {}}})},
    "git/git_create_branch": {"description": "Creates a new branch from an optional base branch",
                              "read_only": False,
                              "input_schema": json.dumps({"properties": {"repo_path": {}, "branch_name": {}}})},
    "git/git_branch": {"description": "List Git branches of the repository", "read_only": True,
                       "input_schema": json.dumps({"properties": {"repo_path": {}, "branch_type": {}}})},
    "sqlite/list_tables": {"description": "List all tables in the SQLite database", "read_only": True,
                           "input_schema": json.dumps({"properties": {}})},
    "filesystem/write_file": {"description": "Create a new file or overwrite an existing file with new content",
                              "read_only": False,
                              "input_schema": json.dumps({"properties": {"path": {}, "content": {}}})},
}

RECIPE = ('Using the available tools, do the following. Step 1: call convert_volume (Convert volume between '
          'units) with from_unit="cup", to_unit="liter", value=250. Step 2: call git_create_branch with '
          'branch_name set to the value at [0].name in the result of step 1. Give the numbers as a JSON object '
          'with "converted_value" (number): the converted_value returned by convert_volume in step 1.')
GOAL = ("Convert 250 cups to liters, then tell me which branches the repository has and how many tables "
        "the database holds. Reply with converted_value, branch_count and table_count.")


def task(question, calls, answer, provenance, split="train", results=None):
    gold = [{"server": t.split("/")[0], "tool": t.split("/")[1], "arguments": a} for t, a in calls]
    return {"question": question, "split": split, "gold_calls": gold, "answer": answer,
            "provenance": {k: {"step": s, "path": p, "seq": s, "tool": calls[s][0]}
                           for k, (s, p) in provenance.items()},
            "gold_results": results or [{"structured": {"converted_value": 0.0591}} for _ in gold],
            "tools": sorted(CATALOG)}


CONVERT = ("unit-converter/convert_volume", {"value": 250, "from_unit": "cup", "to_unit": "liter"})
BRANCH = ("git/git_create_branch", {"repo_path": "/sandbox/repo", "branch_name": "id"})
WRITE = ("filesystem/write_file", {"path": "/sandbox/files/docs/summary.txt", "content": "hello"})


def test_recipe_question_leaks_names_steps_and_paths():
    t = task(RECIPE, [CONVERT, BRANCH], {"converted_value": 0.0591}, {"converted_value": (0, "converted_value")})
    assert quality.names_leaked(t["question"], quality.offered_tools(t)) == ["convert_volume", "git_create_branch"]
    assert quality.step_structure(t["question"])
    assert quality.path_leaks(t, CATALOG) == ["[0]", "from_unit=", "to_unit=", "value="]


def test_goal_question_trips_no_question_check():
    t = task(GOAL, [CONVERT, BRANCH], {"converted_value": 0.0591}, {"converted_value": (0, "converted_value")})
    assert quality.names_leaked(t["question"], quality.offered_tools(t)) == []
    assert not quality.step_structure(t["question"])
    assert quality.path_leaks(t, CATALOG) == []


@pytest.mark.parametrize("question", [
    "Use unit_converter to get this.",                 # a server id, either separator
    "Run convert-volume on 250 cups.",                 # a tool name with the other separator
    "Call git/git_branch.", "Call git__git_branch.",   # the catalog and OpenAI forms
])
def test_name_leak_variants(question):
    assert quality.names_leaked(question, sorted(CATALOG))


@pytest.mark.parametrize("question", [
    "What time is it, and which git branches exist?",       # plain words: server ids `git`, `time`
    "List the tables of the database.",                     # a name's words written apart
    "Open /sandbox/files/my_convert_volume_notes.txt.",     # inside a longer token
])
def test_no_name_leak_in_plain_speech(question):
    assert quality.names_leaked(question, sorted(CATALOG) + ["time/get_current_time"]) == []


@pytest.mark.parametrize("question,expected", [
    ("step 2: read it", True), ("Do step two afterwards.", True), ("In the first step, read the file.", True),
    ("Please carry out this workflow. 1. Run list_tables.", True), ("1) Read the file", True),
    ("First call the converter, then call the calculator.", True), ("Next, invoke the reader.", True),
    ("Read the first table, then count its rows.", False), ("What is 3 + 1. Is it 4?", False),
    ("Convert 2.5 feet to meters and 1 mile to km.", False), ("Give 10 steps of the walk.", False),
])
def test_step_structure(question, expected):
    assert quality.step_structure(question) is expected


def test_path_leak_forms_and_their_negatives():
    results = [{"structured": {"source": {"timezone": "UTC", "rows": [{"name": "a"}]}}}]
    t = task("x", [CONVERT], {"v": 1}, {"v": (0, "source.timezone")}, results=results)
    leak = lambda q: quality.path_leaks({**t, "question": q}, CATALOG)
    assert leak("Report rows[2] of it.") == ["[2]"]
    assert leak("the timezone at source.timezone") == ["source.timezone"]
    assert leak("the name at source.rows.0.name") == ["source.rows", "source.rows.0", "source.rows.0.name"]
    assert leak('with to_unit = "liter"') == ["to_unit="]
    assert leak('an object {"type": "string"} per inputSchema') == ['"type":', "inputSchema"]
    # a file path, a decimal, a domain, a comparison and an answer-format hint are not paths
    assert leak('Read /sandbox/files/a.py, 2.5 kg, see example.com; is x == 3? Give "city" (string).') == []


def test_confirmation_answers_need_a_mutating_source_call():
    t = task(GOAL, [BRANCH, WRITE, CONVERT],
             {"branch": "Created branch 'id' from 'main'", "written": "Successfully wrote to /sandbox/files/x",
              "converted_value": 0.0591, "ok": True},
             {"branch": (0, ""), "written": (1, "content"), "converted_value": (2, "converted_value"),
              "ok": (2, "success")})
    # `ok` is a boolean, but from a read-only call: information, not a confirmation
    assert quality.confirmation_fields(t, CATALOG) == ["branch", "written"]
    status = task(GOAL, [BRANCH], {"message": "Branch made", "new_id": 7},
                  {"message": (0, "message"), "new_id": (0, "id")})
    assert quality.confirmation_fields(status, CATALOG) == ["message"]   # a status key; the new id is kept


def test_echo_answers_equal_a_gold_argument_normalised():
    t = task(GOAL, [CONVERT, WRITE], {"unit": " Liter", "amount": "250", "converted_value": 0.0591},
             {"unit": (0, "to_unit"), "amount": (0, "value"), "converted_value": (0, "converted_value")})
    assert quality.echo_fields(t) == ["unit", "amount"]


def test_bm25_ranks_the_described_tool_first():
    index = quality.BM25(quality.tool_documents(CATALOG))
    assert index.rank("How many liters are 250 cups?")[0] == "unit-converter/convert_volume"
    assert index.rank("How far in feet is 3 miles?")[0] == "unit-converter/convert_length"
    assert index.rank("Which tables does the database have?")[0] == "sqlite/list_tables"
    assert index.rank("Which branches does the repository have?")[0] == "git/git_branch"
    assert index.rank("zzz") == sorted(CATALOG)                    # no match: ties broken by id
    t = task("Convert 250 cups to liters, and make a new branch.", [CONVERT, BRANCH], {"v": 1}, {"v": (0, "")})
    assert quality.recall_at_k(t, index) == 1.0
    assert quality.recall_at_k(t, index, k=1) == 0.5


def test_bm25_scores_from_postings_equal_the_per_document_score():
    # rank() visits only the documents holding a query term; the sums must be the very floats score() gives
    from firefly_exp import lexical
    docs = [lexical.words(d) for d in quality.tool_documents(CATALOG).values()] + [[], ["cup", "cups", "cup"]]
    index = lexical.BM25(docs)
    for q in ("How many liters are 250 cups?", "branches branch of the repository", "zzz", ""):
        query = lexical.words(q)
        assert index.scores(query) == [index.score(query, i) for i in range(len(docs))]
    assert index.scores(lexical.words("cups"))[-1] > 0 and index.scores(lexical.words("cups"))[-2] == 0


def test_rates_per_split():
    recipe = task(RECIPE, [CONVERT, BRANCH], {"converted_value": 0.0591, "branch": "Created branch 'id' from 'main'"},
                  {"converted_value": (0, "converted_value"), "branch": (1, "")}, split="train")
    goal = task(GOAL, [CONVERT], {"converted_value": 0.0591, "unit": "liter"},
                {"converted_value": (0, "converted_value"), "unit": (0, "to_unit")}, split="test")
    q = quality.quality_by_split([recipe, goal, {**goal, "split": "train"}], CATALOG)
    assert list(q) == ["train", "test", "all"]
    assert q["train"]["tasks"] == 2 and q["test"]["tasks"] == 1 and q["all"]["tasks"] == 3
    assert q["test"]["tool_name_leak_rate"] == q["test"]["step_structure_rate"] == q["test"]["path_leak_rate"] == 0
    assert q["train"]["tool_name_leak_rate"] == q["train"]["step_structure_rate"] == 0.5
    assert q["all"]["tool_name_leak_rate"] == round(1 / 3, 4)
    assert q["train"]["confirmation_answer_rate"] == 0.25 and q["train"]["confirmation_task_rate"] == 0.5
    assert q["test"]["echo_answer_rate"] == 0.5 and q["all"]["echo_task_rate"] == round(2 / 3, 4)
    assert q["train"]["calls_per_task_mean"] == 1.5 and q["train"]["single_call_share"] == 0.5
    assert q["all"]["answer_fields_mean"] == 2.0 and q["test"]["tool_recall_at_5"] == 1.0
    empty = quality.quality_by_split([goal], CATALOG)["train"]
    assert empty["tasks"] == 0 and empty["tool_recall_at_5"] is None


def test_card_has_a_quality_table_per_split():
    goal = task(GOAL, [CONVERT], {"converted_value": 0.0591}, {"converted_value": (0, "converted_value")})
    stats = {"verified": 1, "calls_per_task_hist": {"1": 1}, "splits": {"train": 1, "test": 0},
             "leakage": {}, "quality": quality.quality_by_split([goal], CATALOG)}
    card = dataset.dataset_card(stats, "x", 0, ["unit-converter"])
    assert "| check | train | test | all |" in card
    assert "| tool_name_leak_rate | 0.0 | n/a | 0.0 |" in card
    assert "| quality" not in card                                   # not flattened into the statistics table


def test_dataset_stage_reports_quality_per_split(tmp_path):
    """The stage's metrics (summary.json ``tasks``) and stats.json carry ``quality.<split>``; the card its table."""
    from types import SimpleNamespace

    import polars as pl

    goal = task(GOAL, [CONVERT, ("sqlite/list_tables", {})], {"converted_value": 0.0591},
                {"converted_value": (0, "converted_value")}, split="test")
    goal.update(id="task-0", answer_schema={"converted_value": {"type": "number", "description": "x"}},
                difficulty={"calls": 2, "servers": 2, "depth": 1}, dag_id="dag-0", synthesizer="goal", seed=0,
                gold_results=[{"content": [], "structured": {"converted_value": 0.0591}, "is_error": False}] * 2)
    rows = pl.DataFrame([{"tool": k, **v} for k, v in CATALOG.items()])
    inputs = {"synthesizer": SimpleNamespace(value=[goal], metrics={}), "explorer": SimpleNamespace(value=([1], {})),
              "servers": SimpleNamespace(value=rows)}
    ctx = SimpleNamespace(out=tmp_path, settings=SimpleNamespace(name="t"), seed=0)
    stats = dataset.run(None, inputs, ctx)
    assert stats["quality"]["test"]["tasks"] == 1 and stats["quality"]["train"]["tasks"] == 0
    assert stats["quality"]["all"]["calls_per_task_mean"] == 2.0 and stats["quality"]["all"]["path_leak_rate"] == 0
    assert json.loads((tmp_path / "stats.json").read_text())["quality"] == stats["quality"]
    assert "| check | train | test | all |" in (tmp_path / "README.md").read_text()
