"""Chunked pack transfer (edge_agent/update_transfer.py): offers are checked before anything is
stored, only verified chunks reach the disk, and an interrupted transfer resumes with exactly
the chunks it has, never refetching a good one, never trusting a bad one."""
import hashlib
import json
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.pack import read_pack
from edge_agent.update_transfer import (MAX_OFFER_BYTES, Offer, TransferError, TransferStore, make_offer,
                                        new_update_id, parse_index, parse_offer)

TINY = Path(__file__).parent / "data" / "tiny.pack"
UID = "9f2c4e1ab0d3c7e5"
MB = 1 << 20


def _offer(data: bytes = b"", chunk_size: int = 1000, uid: str = UID, **kw) -> tuple[Offer, list[bytes]]:
    data = data or TINY.read_bytes()
    return make_offer(data, uid, "shadow", chunk_size, now=1795320000.0, **kw)


def _doc(**changes) -> dict:
    offer, _ = _offer()
    doc = json.loads(offer.to_json())
    for key, value in changes.items():
        if key.startswith("pack."):
            doc["pack"][key[5:]] = value
        else:
            doc[key] = value
    return doc


def _parse(doc, max_pack=MB, max_chunk=64 * 1024) -> Offer:
    return parse_offer(json.dumps(doc).encode(), max_pack, max_chunk)


# -- offers ---------------------------------------------------------------------------------------
def test_make_offer_round_trips_and_its_chunks_rebuild_the_pack():
    data = TINY.read_bytes()
    offer, chunks = _offer(data)
    assert (offer.pack_name, offer.pack_version) == ("tiny-test", "0.1.0")  # from the manifest
    assert offer.size == len(data) and offer.sha256 == hashlib.sha256(data).hexdigest()
    assert offer.chunks == len(chunks) == -(-len(data) // 1000)
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks[:-1]] == [1000] * (offer.chunks - 1)
    assert len(chunks[-1]) == offer.chunk_length(offer.chunks - 1) == len(data) - 1000 * (offer.chunks - 1)
    assert list(offer.chunk_sha256) == [hashlib.sha256(c).hexdigest() for c in chunks]
    assert parse_offer(offer.to_json(), MB, 1000) == offer
    wire = json.loads(offer.to_json())
    assert wire["schema"] == 1 and wire["pack"]["sha256"] == offer.sha256 and wire["time"] == 1795320000.0
    # an exact multiple: no empty last chunk
    exact, chunks = make_offer(b"x" * 3000, UID, "activate", 1000, name="n", version="v")
    assert exact.chunks == 3 and [len(c) for c in chunks] == [1000] * 3 and exact.chunk_length(2) == 1000
    assert len(new_update_id()) == 16 and new_update_id() != new_update_id()


def test_make_offer_needs_a_pack_or_a_name_and_version():
    with pytest.raises(ValueError, match="not a model pack"):
        make_offer(b"not a zip", UID, "shadow", 100)


@pytest.mark.parametrize("payload,reason", [
    (b"\xff\xfe not utf-8", "json"),
    (b"{not json", "json"),
    (b"[1, 2]", "json"),
    (b" " * (MAX_OFFER_BYTES + 1), "json"),
])
def test_unreadable_offers(payload, reason):
    with pytest.raises(TransferError) as e:
        parse_offer(payload, MB, MB)
    assert e.value.reason == reason and "\n" not in str(e.value)


@pytest.mark.parametrize("changes,reason,words", [
    ({"schema": 2}, "schema", "schema 2"),
    ({"schema": True}, "schema", "schema True"),
    ({"pack": "x"}, "schema", "'pack' is not an object"),
    ({"update_id": "9F2C4E1AB0D3C7E5"}, "field", "update_id"),
    ({"update_id": "../../etc/passwd"}, "field", "update_id"),
    ({"update_id": "9f2c4e1ab0d3c7e"}, "field", "update_id"),
    ({"mode": "yolo"}, "field", "mode"),
    ({"time": "now"}, "field", "time"),
    ({"time": float("nan")}, "field", "time"),
    ({"pack.sha256": "ab" * 31}, "field", "pack.sha256"),
    ({"pack.sha256": "AB" * 32}, "field", "pack.sha256"),
    ({"pack.size": 0}, "field", "pack.size"),
    ({"pack.size": "100"}, "field", "pack.size"),
    ({"pack.size": True}, "field", "pack.size"),
    ({"chunk_size": 0}, "field", "chunk_size"),
    ({"chunks": 3}, "field", "chunks 3"),
    ({"chunk_sha256": ["ab" * 32]}, "field", "chunk_sha256"),
    ({"chunk_sha256": "ab" * 32}, "field", "chunk_sha256"),
    ({"pack.name": ""}, "field", "pack.name"),
    ({"pack.name": "x" * 65}, "field", "pack.name"),
    ({"pack.version": "1.0\x1b[2J"}, "field", "pack.version"),
    ({"pack.size": 2 * MB}, "oversize", "max_pack_mb"),
    ({"chunk_size": 128 * 1024}, "oversize", "max_chunk_kb"),
])
def test_each_bad_offer_is_refused_with_its_reason(changes, reason, words):
    with pytest.raises(TransferError) as e:
        _parse(_doc(**changes))
    assert e.value.reason == reason, str(e.value)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{reason}: ")


def test_a_missing_key_is_a_schema_error():
    doc = _doc()
    del doc["chunk_sha256"]
    with pytest.raises(TransferError) as e:
        _parse(doc)
    assert e.value.reason == "schema" and "chunk_sha256" in e.value.message
    doc = _doc()
    del doc["pack"]["sha256"]
    with pytest.raises(TransferError, match="schema: offer 'pack' lacks sha256"):
        _parse(doc)


def test_a_bad_chunk_hash_in_the_list_is_named():
    doc = _doc()
    doc["chunk_sha256"][2] = "zz" * 32
    with pytest.raises(TransferError, match=r"field: offer chunk_sha256\[2\]"):
        _parse(doc)


def test_chunk_index_from_a_topic():
    assert [parse_index(t) for t in ("0", "7", "123456789")] == [0, 7, 123456789]
    for bad in ("", "-1", "+7", " 7", "07", "7\n", "\u0667", "1e3", "1234567890"):
        with pytest.raises(TransferError) as e:
            parse_index(bad)
        assert e.value.reason == "field"


# -- the store ------------------------------------------------------------------------------------
def _files(store: TransferStore) -> set[str]:
    return {str(p.relative_to(store.dir)) for p in store.dir.rglob("*")}


def test_a_whole_transfer_out_of_order_with_duplicates(tmp_path):
    offer, chunks = _offer()
    store = TransferStore(tmp_path / "updates")
    assert stat.S_IMODE((tmp_path / "updates").stat().st_mode) == 0o750
    assert store.current() is None and store.missing() == [] and store.received() == 0
    store.begin(offer)
    assert store.current() == offer
    assert json.loads((store.dir / UID / "offer.json").read_bytes()) == json.loads(offer.to_json())
    assert store.missing() == list(range(offer.chunks)) and store.missing(limit=2) == [0, 1]
    order = list(reversed(range(offer.chunks)))
    for i in order:
        assert store.add_chunk(UID, i, chunks[i]) is True
        assert store.add_chunk(UID, i, chunks[i]) is False  # a duplicate
    assert store.received() == offer.chunks and store.missing() == [] and store.complete()
    assert store.assemble() == TINY.read_bytes()
    cand = store.assemble_file()
    assert cand == store.dir / UID / "candidate.pack" and read_pack(cand).describe() == "tiny-test 0.1.0"
    assert _files(store) == {UID, f"{UID}/offer.json", f"{UID}/candidate.pack",
                             *(f"{UID}/{i}.chunk" for i in range(offer.chunks))}  # no temp files left
    store.finish()
    assert _files(store) == set() and store.current() is None and store.missing() == []


def test_chunks_are_checked_before_anything_is_written(tmp_path):
    offer, chunks = _offer()
    store = TransferStore(tmp_path)
    store.begin(offer)
    last = offer.chunks - 1
    cases = [
        (("0123456789abcdef", 0, chunks[0]), "field"),  # not the update in progress
        ((UID, offer.chunks, chunks[0]), "field"),
        ((UID, -1, chunks[0]), "field"),
        ((UID, True, chunks[0]), "field"),
        ((UID, 0, chunks[0] + b"x"), "oversize"),
        ((UID, last, chunks[last] + b"x"), "oversize"),  # the last chunk: its remainder, no more
        ((UID, 0, chunks[0][:-1]), "truncated"),
        ((UID, 0, chunks[1]), "chunk_hash"),
        ((UID, 1, b"\x00" + chunks[1][1:]), "chunk_hash"),
    ]
    for args, reason in cases:
        with pytest.raises(TransferError) as e:
            store.add_chunk(*args)
        assert e.value.reason == reason, (args[:2], str(e.value))
        assert "\n" not in str(e.value)
    assert store.received() == 0 and _files(store) == {UID, f"{UID}/offer.json"}


def test_without_an_update_a_chunk_is_refused(tmp_path):
    with pytest.raises(TransferError, match="field: chunk for update"):
        TransferStore(tmp_path).add_chunk(UID, 0, b"x")
    with pytest.raises(TransferError, match="field: no update in progress"):
        TransferStore(tmp_path).assemble()


def test_resume_after_a_restart_asks_only_for_what_is_missing(tmp_path):
    offer, chunks = _offer(chunk_size=500)
    first = TransferStore(tmp_path)
    first.begin(offer)
    held = [0, 2, 3, 7]
    for i in held:
        first.add_chunk(UID, i, chunks[i])
    # a restart: a new store on the same directory
    again = TransferStore(tmp_path)
    assert again.current() == offer and again.received() == len(held)
    assert again.missing() == [i for i in range(offer.chunks) if i not in held]
    for i in held:
        assert again.add_chunk(UID, i, chunks[i]) is False  # never written twice
    # the retained offer arrives again after the reconnect: same update, chunks kept
    again.begin(replace(offer, time=offer.time + 60))
    assert again.received() == len(held)
    for i in again.missing():
        again.add_chunk(UID, i, chunks[i])
    assert again.assemble() == TINY.read_bytes()


def test_a_chunk_damaged_on_disk_is_dropped_at_restart_and_asked_for_again(tmp_path, caplog):
    offer, chunks = _offer()
    store = TransferStore(tmp_path)
    store.begin(offer)
    for i, c in enumerate(chunks):
        store.add_chunk(UID, i, c)
    f = tmp_path / UID / "1.chunk"
    data = bytearray(f.read_bytes())
    data[10] ^= 0x01
    f.write_bytes(bytes(data))
    (tmp_path / UID / "2.chunk").write_bytes(chunks[2][:-5])  # torn
    (tmp_path / UID / ".3.chunk.x.tmp").write_bytes(b"half a chunk")  # a write cut by the crash
    (tmp_path / UID / "99.chunk").write_bytes(b"beyond the offer")
    (tmp_path / ".tmp-abcd").mkdir()  # an interrupted begin
    with caplog.at_level(logging.WARNING, logger="edge_agent.update_transfer"):
        again = TransferStore(tmp_path)
        assert again.missing() == [1, 2]
    assert "chunk 1 on disk does not match" in caplog.text and "chunk 2 on disk" in caplog.text
    assert _files(again) == {UID, f"{UID}/offer.json", *(f"{UID}/{i}.chunk" for i in range(offer.chunks) if i not in (1, 2))}
    with pytest.raises(TransferError) as e:
        again.assemble()
    assert e.value.reason == "truncated" and "first: 1, 2" in e.value.message
    assert again.add_chunk(UID, 1, chunks[1]) and again.add_chunk(UID, 2, chunks[2])
    assert again.assemble() == TINY.read_bytes()


def test_a_chunk_damaged_after_it_was_verified_is_caught_at_assembly(tmp_path):
    offer, chunks = _offer()
    store = TransferStore(tmp_path)
    store.begin(offer)
    for i, c in enumerate(chunks):
        store.add_chunk(UID, i, c)
    (tmp_path / UID / "0.chunk").write_bytes(b"\x00" * len(chunks[0]))
    with pytest.raises(TransferError) as e:
        store.assemble()
    assert e.value.reason == "chunk_hash"
    assert store.missing() == [0]  # dropped: asked for again, never trusted


def test_an_offer_whose_pack_hash_is_wrong_fails_assembly(tmp_path):
    offer, chunks = _offer()
    liar = replace(offer, sha256=hashlib.sha256(b"another pack").hexdigest())
    store = TransferStore(tmp_path)
    store.begin(liar)
    for i, c in enumerate(chunks):
        store.add_chunk(UID, i, c)
    with pytest.raises(TransferError) as e:
        store.assemble()
    assert e.value.reason == "pack_hash" and "\n" not in str(e.value)


def test_a_new_update_abandons_the_one_in_progress(tmp_path):
    old, old_chunks = _offer()
    store = TransferStore(tmp_path)
    store.begin(old)
    store.add_chunk(UID, 0, old_chunks[0])
    new, _ = _offer(b"y" * 2500, uid="0123456789abcdef", name="other", version="2")
    store.begin(new)
    assert store.current() == new and store.received() == 0 and store.missing() == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["0123456789abcdef"]
    with pytest.raises(TransferError, match="field"):  # a late chunk of the old update
        store.add_chunk(UID, 1, old_chunks[1])
    # the same update id with other content starts over rather than mixing chunks
    changed, _ = _offer(b"z" * 2500, uid="0123456789abcdef", name="other", version="3")
    store.add_chunk("0123456789abcdef", 0, b"y" * 1000)
    store.begin(changed)
    assert store.current() == changed and store.received() == 0


def test_a_corrupt_offer_file_drops_the_update(tmp_path, caplog):
    offer, chunks = _offer()
    store = TransferStore(tmp_path)
    store.begin(offer)
    store.add_chunk(UID, 0, chunks[0])
    (tmp_path / UID / "offer.json").write_bytes(b'{"schema": 1, "upd')
    with caplog.at_level(logging.WARNING, logger="edge_agent.update_transfer"):
        again = TransferStore(tmp_path)
        assert again.current() is None
    assert "offer.json unusable" in caplog.text
    assert os.listdir(tmp_path) == []
    # an offer.json naming another directory is not trusted either
    store = TransferStore(tmp_path)
    store.begin(offer)
    (tmp_path / UID).rename(tmp_path / "0123456789abcdef")
    assert TransferStore(tmp_path).current() is None and os.listdir(tmp_path) == []


def test_abandon(tmp_path):
    offer, chunks = _offer()
    store = TransferStore(tmp_path)
    store.begin(offer)
    store.add_chunk(UID, 0, chunks[0])
    store.abandon()
    assert store.current() is None and os.listdir(tmp_path) == []
    assert TransferStore(tmp_path).current() is None
    store.abandon()  # nothing in progress: no error
