//! Containing panics in code that reads bytes from clients through a third-party engine.
//!
//! The Yjs engine (yrs) panics on some malformed updates instead of refusing them (found by
//! fuzzing: an index out of bounds in its block store, a missing XML tag). A panic there must
//! cost the update that caused it, never the server: every tenant's work runs in this process.
//! So the release build unwinds (`panic = "unwind"` in Cargo.toml), and [`contain`] runs such
//! code under `catch_unwind`.
//!
//! Everywhere else a panic is a bug with unknown consequences, and the process still stops at
//! once as it did when it was built to abort: [`install_hook`] (called by `main` and the fuzz
//! harness) aborts after reporting any panic that is not inside [`contain`]. The store writer's
//! commit path in particular never runs in a contained section.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, PanicHookInfo};

thread_local! {
    static CONTAINED: Cell<u32> = const { Cell::new(0) };
}

/// A panic that [`contain`] caught: its message and where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contained(pub String);

impl std::fmt::Display for Contained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `f`, turning a panic inside it into an error. `f` must leave nothing shared half-changed
/// that outlives the call, or the caller must throw such state away on an error (as the
/// document engine does with a document whose update panicked).
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, Contained> {
    CONTAINED.with(|c| c.set(c.get() + 1));
    let out = std::panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(c.get() - 1));
    out.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Contained(msg)
    })
}

fn contained() -> bool {
    CONTAINED.with(Cell::get) > 0
}

/// Installs the process's panic hook: a panic inside [`contain`] is logged (as a warning, with
/// where it happened) and unwinds to it; any other is reported by the hook that was installed
/// before, and the process aborts.
pub fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        if contained() {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            tracing::warn!(at, "contained a panic while reading client input; the input is refused");
            return;
        }
        previous(info);
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_an_error_and_the_count_unwinds() {
        let r: Result<(), _> = contain(|| panic!("bad block"));
        assert_eq!(r, Err(Contained("bad block".into())));
        assert!(!contained());
        assert_eq!(contain(|| 7), Ok(7));
    }
}
