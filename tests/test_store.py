import json

from firefly_exp.store import JsonlWriter, StageStore, read_jsonl, stable_hash


def test_address_depends_on_params_inputs_and_code(tmp_path):
    store = StageStore(tmp_path)
    a = store.address("graph", {"w": 1}, {"servers": "k1"}, "c1")
    assert a == store.address("graph", {"w": 1}, {"servers": "k1"}, "c1")
    assert len({a, store.address("graph", {"w": 2}, {"servers": "k1"}, "c1"),
                store.address("graph", {"w": 1}, {"servers": "k2"}, "c1"),
                store.address("graph", {"w": 1}, {"servers": "k1"}, "c2")}) == 4
    folder = store.folder("graph", a)
    assert store.manifest(folder) is None
    store.finish(folder, {"metrics": {"edges": 3}})
    assert store.manifest(folder)["metrics"]["edges"] == 3
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})


def test_jsonl_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "calls.jsonl"
    with JsonlWriter(path) as w:
        w.write({"i": 0})
        w.write({"i": 1})
    with open(path, "a") as fh:
        fh.write('{"i": 2, "trunc')  # a writer killed mid-record
    assert [r["i"] for r in read_jsonl(path)] == [0, 1]
    with JsonlWriter(path) as w:
        w.write({"i": 3})
    assert [r["i"] for r in read_jsonl(path)] == [0, 1, 3]
    assert all(json.loads(line) for line in path.read_text().splitlines())
