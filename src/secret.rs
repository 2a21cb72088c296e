//! A string that must never be printed: the Telnyx API key, the AMQP URL
//! (it holds a password), a Redis URL.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret value. `Debug` and `Display` print `[redacted]`; the value is only
/// reachable through [`Secret::expose`], which makes every use easy to audit.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value. Only the HTTP client's `Authorization` header should call this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

thread_local! {
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with secrets serialized as their values instead of `[redacted]`:
/// for writing a configuration file a child process reads, never for output
/// a person or a log sees. Serialization outside `f` redacts.
pub fn revealed<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            REVEAL.with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(REVEAL.with(|r| r.replace(true)));
    f()
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if REVEAL.with(Cell::get) {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str("[redacted]")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("KEY0123456789abcdef");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(s.expose(), "KEY0123456789abcdef");
    }

    #[test]
    fn serialization_redacts_unless_revealed() {
        let s = Secret::new("KEY0123456789abcdef");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        let shown = revealed(|| serde_json::to_string(&s).unwrap());
        assert_eq!(shown, "\"KEY0123456789abcdef\"");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"[redacted]\"",
            "reset after"
        );
    }
}
