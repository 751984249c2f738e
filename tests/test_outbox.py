import json

from edge_agent.outbox import MemoryOutbox


def test_seq_is_assigned_at_commit_and_items_stay_until_acked():
    ob = MemoryOutbox(max_bytes=10_000)
    seqs = [ob.commit("alert", {"n": i}) for i in range(3)]
    assert seqs == [1, 2, 3]
    items = ob.pending(10)
    assert [json.loads(i.payload)["seq"] for i in items] == [1, 2, 3]
    ob.ack(items[0].id)
    assert [i.seq for i in ob.pending(10)] == [2, 3]
    assert [i.seq for i in ob.pending(10, skip={items[1].id})] == [3]
    assert ob.acked["alert"] == 1


def test_eviction_takes_summaries_first_and_counts_them():
    ob = MemoryOutbox(max_bytes=400)
    ob.commit("alert", {"pad": "a" * 100})
    for i in range(10):
        ob.commit("summary", {"pad": "s" * 100, "i": i})
    kinds = [i.kind for i in ob.pending(100)]
    assert "alert" in kinds  # the alert survived
    assert ob.size_bytes <= 400
    assert ob.evicted["summary"] == 11 - len(kinds) and ob.evicted["alert"] == 0
