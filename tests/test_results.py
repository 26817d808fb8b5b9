from firefly_exp.results import answers_match, field_name, get_path, leaves, value_of


def test_value_of_prefers_structured_and_unwraps_result():
    assert value_of({"structured": {"a": 1}, "content": [{"type": "text", "text": "x"}]}) == {"a": 1}
    assert value_of({"structured": {"result": "[1, 2]"}, "content": []}) == [1, 2]
    assert value_of({"content": [{"type": "text", "text": "[{'n': 1}]"}]}) == [{"n": 1}]
    assert value_of({"content": [{"type": "text", "text": "plain words"}]}) == "plain words"


def test_leaves_and_paths_round_trip():
    value = {"rows": [{"name": "Ada", "age": 36}, {"name": "Bo", "age": 5}], "ok": True}
    for path, leaf in leaves(value):
        assert get_path(value, path) == leaf
    assert ("rows.1.name", "Bo") in leaves(value)


def test_answer_matching_is_lenient_on_form_only():
    assert answers_match("Paris", "  paris ")
    assert answers_match(3, "3.0")
    assert not answers_match("Paris", "London")
    assert not answers_match(3, 4)
    assert field_name("rows.0.city", {"city"}) == "city_2"
