/**
 * States of an I/O item shared between the main thread and the store's I/O
 * worker (one Int32 word each): PENDING → CLAIMED (the worker, by
 * compare-and-swap) → DONE or FAILED; or PENDING → CANCELLED (the main
 * thread, when it stops waiting and does the I/O itself). Whoever wins the
 * swap owns the item's buffer.
 */
export const PENDING = 0, DONE = 1, FAILED = 2, CLAIMED = 3, CANCELLED = 4;
