import threading

from edge_agent.bounded_queue import BoundedQueue


def test_full_queue_counts_drops_and_never_grows():
    q = BoundedQueue("t", maxsize=3)
    results = [q.offer(i) for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    assert q.qsize() == 3 and q.dropped == 7 and q.accepted == 3
    assert q.drain(10) == [0, 1, 2]
    assert q.get(timeout=0.01) is None


def test_put_waits_for_room_and_counts_a_timeout():
    q = BoundedQueue("t", maxsize=1)
    assert q.put("a", timeout=0.01)
    assert not q.put("b", timeout=0.01)
    assert q.dropped == 1
    threading.Timer(0.05, lambda: q.get(timeout=1)).start()
    assert q.put("c", timeout=2.0)
    assert q.get(timeout=1) == "c"


def test_put_until_waits_without_counting_and_gives_up_on_stop():
    q = BoundedQueue("t", maxsize=1)
    stop = threading.Event()
    assert q.put_until("a", stop)
    threading.Timer(0.3, lambda: q.get(timeout=1)).start()
    assert q.put_until("b", stop, poll_s=0.05)  # waited ~0.3 s for room
    assert q.dropped == 0 and q.accepted == 2
    threading.Timer(0.1, stop.set).start()
    assert not q.put_until("c", stop, poll_s=0.05)
    assert q.dropped == 0 and q.get(timeout=0.1) == "b"


def test_wait_for_sleeps_until_the_mark_is_reached_by_any_put_path():
    q = BoundedQueue("t", maxsize=100)
    stop = threading.Event()
    q.offer(1)
    assert q.wait_for(1, timeout=5.0)  # already there: no wait
    assert not q.wait_for(3, timeout=0.05)  # times out, takes nothing
    assert q.qsize() == 1

    def produce():
        q.offer(2)
        q.put(3, timeout=1.0)
        q.put_until(4, stop)

    threading.Timer(0.05, produce).start()
    assert q.wait_for(4, timeout=5.0)
    assert q.drain(10) == [1, 2, 3, 4] and q.dropped == 0


def test_a_producer_does_not_wake_a_consumer_before_its_mark():
    q = BoundedQueue("t", maxsize=100)
    woke = []
    t = threading.Thread(target=lambda: woke.append(q.wait_for(5, timeout=5.0)))
    t.start()
    for i in range(4):
        q.offer(i)
    t.join(0.2)
    assert t.is_alive() and not woke  # four queued, still asleep
    q.offer(4)
    t.join(5.0)
    assert woke == [True]
