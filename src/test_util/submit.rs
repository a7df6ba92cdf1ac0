//! Submitting as tests do: one call that submits and waits until the event is accepted (queued,
//! or spooled when the spool is on), instead of `.submit(e, admit).and_then(Receipt::wait)`.

use std::time::Duration;

use crate::event::HookEvent;
use crate::pipeline::{Admit, PipelineHandle, Receipt};
use crate::pipeline::{Submission, SubmitError};

/// How long the `*_all` helpers wait for room in the queues, per event.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Submit-and-wait on a [`PipelineHandle`].
pub trait SubmitExt {
    /// Submits `what` (an event or writes) under `admit` and waits for its acceptance.
    fn accept<'a>(&self, what: impl Into<Submission<'a>>, admit: Admit) -> Result<(), SubmitError>;

    /// Submits `what` without waiting for room ([`Admit::now`]) and waits for its acceptance.
    fn accept_now<'a>(&self, what: impl Into<Submission<'a>>) -> Result<(), SubmitError> {
        self.accept(what, Admit::now())
    }

    /// Submits every event, waiting up to [`PATIENCE`] each for room; panics on a refusal.
    fn submit_all(&self, events: &[HookEvent]) {
        for (i, e) in events.iter().enumerate() {
            if let Err(err) = self.accept(e, Admit::within(PATIENCE)) {
                panic!("event {i} refused: {err}");
            }
        }
    }
}

impl SubmitExt for PipelineHandle {
    fn accept<'a>(&self, what: impl Into<Submission<'a>>, admit: Admit) -> Result<(), SubmitError> {
        self.submit(what, admit).and_then(Receipt::wait)
    }
}
