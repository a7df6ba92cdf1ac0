//! What the `coalesce` and `parts` benches time after building their ops: every op pushed into a
//! fresh `Coalescer`, then taken out in 25-request batches (and completed) until it is empty.
//! Included with `#[path]`.

use std::hint::black_box;
use std::time::Instant;

use mqtt_dynamo::pipeline::coalesce::Coalescer;
use mqtt_dynamo::storage::item::Op;

/// Pushes `ops` and drains them in batches of at most 25 requests and `max_bytes`.
pub fn push_and_drain(ops: Vec<Op>, max_bytes: usize) {
    let now = Instant::now();
    let mut c = Coalescer::new();
    for op in ops {
        c.push(op, now);
    }
    loop {
        let batch = c.take(25, max_bytes);
        if batch.is_empty() {
            break;
        }
        for t in &batch {
            c.complete(&t.key);
        }
        black_box(batch);
    }
}
