//! Panic capture: a process-wide panic hook that remembers the last panic message of each
//! thread, so that a supervised actor that died in a panic can say what happened.
//!
//! The hook is installed once, on first use, and chains to the hook that was installed before
//! it (the default hook still prints the panic to stderr). The message is kept in a
//! thread-local: the death guard of an actor runs on the same arbiter thread during the unwind
//! and takes it from there.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    /// Message and location of the last panic on this thread, taken by [`take_last_panic`].
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

/// Installs the recording hook once per process, chained to the previous hook.
pub(crate) fn install_hook() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("panic with a non-string payload");
            let text = match info.location() {
                Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
                None => message.to_owned(),
            };
            // `try_with` and `try_borrow_mut`: a panic hook must never panic itself (that
            // would abort), even when it runs while the thread-local is being torn down or
            // while this very cell is borrowed.
            let _ = LAST_PANIC.try_with(|cell| {
                if let Ok(mut slot) = cell.try_borrow_mut() {
                    *slot = Some(text);
                }
            });
            previous(info);
        }));
    });
}

/// Takes the message of the last panic recorded on the current thread, if any.
///
/// Never panics, so it is safe to call from a `Drop` that runs during an unwind.
pub(crate) fn take_last_panic() -> Option<String> {
    LAST_PANIC
        .try_with(|cell| cell.try_borrow_mut().ok().and_then(|mut slot| slot.take()))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_message_and_location_of_a_caught_panic() {
        install_hook();
        let result = std::panic::catch_unwind(|| panic!("boom {}", 42));
        assert!(result.is_err());
        let message = take_last_panic().expect("the hook recorded the panic");
        assert!(message.starts_with("boom 42 (at "), "{message}");
        assert_eq!(take_last_panic(), None, "the message is taken once");
    }
}
