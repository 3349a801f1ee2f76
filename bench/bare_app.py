"""The reference of ``bench.load``: a bare FastAPI route returning a constant JSON object, served
with the same uvicorn settings as the API, so that each route's share of it says how much of the
framework's ceiling the API reaches on this machine."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def constant() -> dict[str, str]:
    return {"status": "ok"}
