//! Bounded echoes of caller-supplied strings. A model name, label, segment,
//! column or tensor name that goes back into a status message or a log line
//! goes through [`echo`]: at most [`MAX_ECHO_BYTES`] bytes of it, cut on a
//! char boundary and marked, with control and bidirectional-formatting
//! characters escaped. Without it a 1 MB `model_name` came back as a 1 MB
//! `grpc-message` header, which clients report as a header-size failure
//! instead of NOT_FOUND, and a name with a newline could forge a log line.
//!
//! The full string stays where it is (errors keep their fields); only its
//! `Display` is bounded, so the one rule holds wherever the text is shown.

use std::fmt::{self, Write};

/// The most bytes of a caller's string that an echo shows, escapes included.
pub const MAX_ECHO_BYTES: usize = 128;

/// `s` for a message or log line: bounded to [`MAX_ECHO_BYTES`] and escaped.
pub fn echo(s: &str) -> Echo<'_> {
    echo_up_to(s, MAX_ECHO_BYTES)
}

/// [`echo`] with another bound, for text that is not a name (a decoder's
/// reason, a method path).
pub fn echo_up_to(s: &str, max_bytes: usize) -> Echo<'_> {
    Echo { s, max_bytes }
}

/// A bounded, escaped view of a string; see [`echo`].
#[derive(Clone, Copy)]
pub struct Echo<'a> {
    s: &'a str,
    max_bytes: usize,
}

/// How `c` is shown: itself, or an escape for a character that would break
/// a line or reorder what a terminal shows.
enum Shown {
    Plain(char),
    Short(&'static str),
    Unicode(char),
}

impl Shown {
    fn of(c: char) -> Self {
        match c {
            '\n' => Shown::Short("\\n"),
            '\r' => Shown::Short("\\r"),
            '\t' => Shown::Short("\\t"),
            // Bidirectional overrides, embeddings, isolates and marks: they
            // can make a name read as something else (Trojan Source).
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                Shown::Unicode(c)
            }
            c if c.is_control() => Shown::Unicode(c),
            c => Shown::Plain(c),
        }
    }

    fn len(&self) -> usize {
        match self {
            Shown::Plain(c) => c.len_utf8(),
            Shown::Short(s) => s.len(),
            Shown::Unicode(c) => c.escape_unicode().len(),
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Plain(c) => f.write_char(*c),
            Shown::Short(s) => f.write_str(s),
            Shown::Unicode(c) => write!(f, "{}", c.escape_unicode()),
        }
    }
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        for c in self.s.chars() {
            let shown = Shown::of(c);
            if written + shown.len() > self.max_bytes {
                // The marker gives the caller's length, so two long names
                // that share a prefix can still be told apart.
                return write!(f, "…(truncated, {} bytes)", self.s.len());
            }
            shown.write(f)?;
            written += shown.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_plain_names_are_shown_as_they_are() {
        assert_eq!(echo("churn").to_string(), "churn");
        assert_eq!(echo("").to_string(), "");
        assert_eq!(echo("région-été").to_string(), "région-été");
        let exact = "a".repeat(MAX_ECHO_BYTES);
        assert_eq!(echo(&exact).to_string(), exact);
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary_and_marked() {
        let name = "x".repeat(1 << 20);
        let shown = echo(&name).to_string();
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.starts_with(&"x".repeat(MAX_ECHO_BYTES)));
        assert!(shown.ends_with("…(truncated, 1048576 bytes)"), "{shown}");
        // 'é' is two bytes: 127 bytes of 'a' then 'é' does not fit in 128.
        let name = format!("{}é{}", "a".repeat(MAX_ECHO_BYTES - 1), "b".repeat(10));
        let shown = echo(&name).to_string();
        assert!(shown.starts_with(&format!("{}…", "a".repeat(MAX_ECHO_BYTES - 1))));
        assert!(shown.ends_with("…(truncated, 139 bytes)"), "{shown}");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_within_the_bound() {
        assert_eq!(
            echo("churn\n2024-01-01 INFO forged").to_string(),
            "churn\\n2024-01-01 INFO forged"
        );
        assert_eq!(echo("a\u{0}b\u{1b}[31m").to_string(), "a\\u{0}b\\u{1b}[31m");
        assert_eq!(echo("ab\u{202e}cd").to_string(), "ab\\u{202e}cd");
        // Escapes count against the bound: the output stays bounded even
        // when every byte expands.
        let controls = "\u{1}".repeat(10_000);
        let shown = echo(&controls).to_string();
        assert!(shown.len() <= MAX_ECHO_BYTES + 60, "{}", shown.len());
        assert!(!shown.contains('\u{1}'));
        assert!(shown.contains("truncated, 10000 bytes"));
    }

    #[test]
    fn a_custom_bound_applies() {
        assert_eq!(
            echo_up_to("abcdef", 3).to_string(),
            "abc…(truncated, 6 bytes)"
        );
    }
}
