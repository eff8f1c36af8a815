"""A FastAPI app whose routes submit jobs with ``trioq.Client`` under asyncio.

    uvicorn examples.fastapi_app:app --host 127.0.0.1 --port 8000
    curl -X POST http://127.0.0.1:8000/signup \\
         -H 'content-type: application/json' -d '{"email": "a@example.com"}'

``POST /signup`` enqueues an ``email:send`` job (payload ``{"to": ..., "subject":
...}``, the README's ``Email``) and answers 202 with its id; a worker that handles
``email:send`` sends it. The broker URL comes from ``$TRIOQ_BROKER_URL`` (default
``http://127.0.0.1:8080``), a token from ``$TRIOQ_TOKEN``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

import trioq


class Signup(BaseModel):
    """The body of ``POST /signup``."""

    email: str
    name: str = ""


class Email(BaseModel):
    """The payload of an ``email:send`` job (what its handler validates)."""

    to: str
    subject: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One client for the app's life: every request shares its connections, and
    concurrent submits share bulk requests."""
    async with trioq.Client(
        os.environ.get("TRIOQ_BROKER_URL", "http://127.0.0.1:8080"),
        token=os.environ.get("TRIOQ_TOKEN"),
        # a request should not hang for the default 30 s while the broker is away
        retry_deadline=5.0,
    ) as client:
        app.state.trioq = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/signup", status_code=202)
async def signup(body: Signup, request: Request) -> dict[str, str]:
    """Queue the welcome email; answers ``{"jobId": ...}`` once the job is durable."""
    client: trioq.Client = request.app.state.trioq
    subject = f"Welcome, {body.name}!" if body.name else "Welcome!"
    try:
        job_id = await client.submit("email:send", Email(to=body.email, subject=subject))
    except (trioq.BrokerUnreachable, trioq.NotLeader, trioq.QueueFull) as exc:
        # the queue is out of reach or full: the caller may try again, so not a 500
        raise HTTPException(503, f"the welcome email could not be queued: {exc}") from exc
    return {"jobId": job_id}
