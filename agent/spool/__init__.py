"""The write-ahead spool: a directory of segment files that usage is appended to durably
before the agent answers, and read from, in order, by delivery.

| module        | one role                                                              |
|---------------|-----------------------------------------------------------------------|
| `format`      | the bytes on disk: frames, segment header, cursor file, paths         |
| `spool`       | `Spool`: group-commit appends, ordered reads, out-of-order acks, cursor |
| `consumer`    | the reader's side: handed out, given back, acknowledged; the cursor    |
| `acked`       | acknowledgements beyond the cursor: a bitmap, ranges in the cursor file |
| `writer`      | the active segment: write, sync, cut back, roll                       |
| `reader`      | reading frames in order (again after a rewind), quarantining damage   |
| `recovery`    | opening a directory: check, lock, list, recover the newest segment     |
| `segments`    | segment files: made from a zero-filled spare, sealed to their frames  |
| `space`       | room on disk: `spool.max_bytes`, `spool.min_free_bytes`, readiness    |
| `side`        | small spools beside the usage spool (ledger marks, idempotency keys)  |

Invariants (what the tests in `tests/spool/` hold the code to):

1. An appender's awaitable completes only once its frames are written (and, with
   `fsync = "always"`, synced); an append is all or nothing, a failed write is cut back.
2. A reader is handed only frames below the durable seq: never one whose appender was not
   answered yet, and each frame once per process, unless the reader gave it back
   (`release`) unacknowledged: then once more after a `rewind`.
3. The cursor file is replaced atomically, only after the data it depends on is synced,
   and never points past an entry that was not acknowledged, nor lists one as
   acknowledged beyond it. A failed save keeps the last. A seq it names as consumed is
   never given to a new entry.
4. A segment is deleted only when every frame in it is behind the *persisted* cursor.
5. Only the newest segment may end in zeros or in a torn frame; a sealed segment ends at
   its last frame. Damage anywhere else is quarantined and counted, never skipped silently.
6. Every file is created 0640 through `agent.fsio`, never through a symbolic link, in a
   directory that only the agent's user can write.

Threads (everything else runs on the event loop):

* **spool-write** (one thread): the segment write and sync when syncs are slow (the loop
  waits for it), the interval sync, and the cursor save, which then deletes consumed
  segments. That deletion pops sealed segments off the front of the segment list while
  the loop may read the list (`read`, `bytes_used`): a `list.pop(0)` is atomic under the
  GIL, and the segments it removes are wholly behind the persisted cursor, so no reader
  position, and no append, is in them. `SegmentWriter.lock` keeps the loop's inline writes
  and this thread's syncs and rolls off the same fd at the same time. The cursor it saves
  is taken on the loop (acks change the acknowledged ranges there) and handed over whole.
* **spool-spare** (one thread): zero-fills `segment.spare`; it touches only that file and
  its temporary, never the spool's state.
"""

from agent.spool.spool import Spool

__all__ = ["Spool"]
