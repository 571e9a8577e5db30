"""eventloop.running_loop: the cached running loop is always the caller's own."""

from __future__ import annotations

import asyncio
import threading

import pytest

from resolver.eventloop import running_loop


def test_outside_a_loop_it_raises_like_asyncio():
    with pytest.raises(RuntimeError):
        running_loop()


def test_each_new_loop_is_found_not_a_cached_finished_one():
    async def which():
        return running_loop(), asyncio.get_running_loop()

    first, expected_first = asyncio.run(which())
    second, expected_second = asyncio.run(which())
    assert first is expected_first and second is expected_second and first is not second


def test_loops_running_at_once_in_two_threads_each_get_their_own():
    seen: dict[str, tuple] = {}
    both_running = threading.Barrier(2)

    def worker(name: str) -> None:
        async def main():
            both_running.wait(timeout=5)  # the other thread's loop is running too
            seen[name] = (running_loop(), asyncio.get_running_loop())
            both_running.wait(timeout=5)  # neither finishes before both have looked

        asyncio.run(main())

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["a"][0] is seen["a"][1] and seen["b"][0] is seen["b"][1]
    assert seen["a"][0] is not seen["b"][0]


def test_forget_makes_the_next_call_look_again():
    from resolver import eventloop

    async def main():
        loop = asyncio.get_running_loop()
        assert eventloop.running_loop() is loop
        eventloop.forget()
        assert eventloop._local.loop is None
        assert eventloop.running_loop() is loop

    asyncio.run(main())
