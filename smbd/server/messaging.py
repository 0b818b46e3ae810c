"""Requests from one worker to another, carried by smbdd over the control channels.

The state store (smbd.store) tells a worker which process holds a session or a durable
open; this is how it then asks that process to act (end the session, hand the open over)
and waits for the answer, as Samba's smbd processes do with messaging_send and the
MSG_SMBXSRV_* messages. A request may carry descriptors: an open travels as its file
descriptors, and with them its OFD share-mode and byte-range locks.

Wire (smbd.control): worker -> smbdd {"op": "send", "to": pid, "body": {...}} + fds;
smbdd -> worker {"op": "message", "from": pid, "body": {...}} + fds. A body is a request
{"kind", "id", ...} or an answer {"reply_to": id, ...}; smbdd answers {"reply_to": id,
"error": ...} itself when the addressee is not one of its workers.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
from typing import Awaitable, Callable

log = logging.getLogger("smbd.messaging")

ASK_TIMEOUT = 10.0  # seconds; a worker that does not answer by then is taken as unable to
Reply = tuple[dict, list[int]]
Handler = Callable[[dict, list[int]], "Reply | Awaitable[Reply]"]


class MessageError(Exception):
    """The other worker could not be asked, or did not answer."""


class Messenger:
    def __init__(self, send: Callable[[dict, list[int]], None]):
        self._send = send
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.handlers: dict[str, Handler] = {}

    async def ask(self, pid: int, kind: str, body: dict, fds: list[int] = (),
                  timeout: float = ASK_TIMEOUT) -> Reply:
        """Send a request to worker ``pid`` and wait for its answer (body, descriptors).
        The caller owns the descriptors of the answer."""
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            self._send({"op": "send", "to": pid, "body": {**body, "kind": kind, "id": rid}}, list(fds))
        except (OSError, ValueError) as e:
            self._waiting.pop(rid, None)
            raise MessageError(f"cannot send {kind} to worker {pid}: {e}") from e
        try:
            reply, reply_fds = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise MessageError(f"worker {pid} did not answer {kind} within {timeout:.0f} s") from None
        finally:
            self._waiting.pop(rid, None)
        if "error" in reply:
            _close_all(reply_fds)
            raise MessageError(f"{kind} to worker {pid}: {reply['error']}")
        return reply, reply_fds

    def deliver(self, record: dict, fds: list[int]) -> None:
        """A message smbdd passed us: an answer we wait for, or a request to serve."""
        body = record.get("body")
        sender = record.get("from")
        if not isinstance(body, dict):
            _close_all(fds)
            return
        if "reply_to" in body:
            future = self._waiting.get(body["reply_to"])
            if future is None or future.done():
                _close_all(fds)  # answered too late: its descriptors are nobody's
                return
            future.set_result((body, fds))
            return
        handler = self.handlers.get(body.get("kind"))
        if handler is None or not isinstance(sender, int):
            _close_all(fds)
            self._reply(sender, body, {"error": f"unknown request {body.get('kind')!r}"}, [])
            return
        asyncio.get_running_loop().create_task(self._serve(handler, sender, body, fds))

    async def _serve(self, handler: Handler, sender: int, body: dict, fds: list[int]) -> None:
        try:
            result = handler(body, fds)
            if inspect.isawaitable(result):
                result = await result
            reply, reply_fds = result
        except Exception as e:  # a request must get an answer, whatever went wrong
            log.exception("serving %s from worker %d", body.get("kind"), sender)
            reply, reply_fds = {"error": f"{type(e).__name__}: {e}"}, []
        self._reply(sender, body, reply, reply_fds)

    def _reply(self, sender, body: dict, reply: dict, fds: list[int]) -> None:
        try:
            if isinstance(sender, int) and sender > 0 and "id" in body:
                self._send({"op": "send", "to": sender, "body": {**reply, "reply_to": body["id"]}}, fds)
        except (OSError, ValueError) as e:
            log.warning("cannot answer worker %s: %s", sender, e)
        finally:
            _close_all(fds)  # sent (the receiver has its own copies) or lost


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
