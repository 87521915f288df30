"""Call the gateway through observer-core's Python API: every call is recorded as an op.

    GATEWAY_URL=http://localhost:3700 OBSERVER_URL=http://127.0.0.1:3800 \
        python examples/gateway_client.py "welders in Ohio"

``call`` returns the gateway's JSON unchanged; the op goes to the observer's
``/events`` in the background (set ``OBSERVER_TOKEN`` if the daemon has a token).
Leaving the ``with`` block sends the ops still buffered.
"""

from __future__ import annotations

import asyncio
import sys

from observer_plugins.sources.gateway import AsyncObservedGateway, ObservedGateway


def search(query: str) -> None:
    with ObservedGateway() as gateway:
        data = gateway.call("/search", {"q": query}, f"search: {query}")
        print("search:", data)
        print("ops not delivered:", gateway.dropped)


async def ask(question: str) -> None:
    async with AsyncObservedGateway() as gateway:
        data = await gateway.call("/ask", {"question": question}, f"ask: {question}")
        print("ask:", data)


if __name__ == "__main__":
    text = sys.argv[1] if len(sys.argv) > 1 else "welders in Ohio"
    search(text)
    asyncio.run(ask(text))
