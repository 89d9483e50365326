//! What a rule may be before the CEL parser sees it, and the net under the
//! parser for what the limits do not foresee. A rules file is untrusted
//! input: cel 0.15's parser panics formatting a syntax error past character
//! 65,535 (100,000 nested parentheses, or 3,500 `||` terms ending in `&&& )`),
//! and a 50,000-term rule that does parse keeps half a gigabyte. The limits
//! below refuse such rules cheaply; [`contain`] turns a parser panic into a
//! refused rule instead of a dead process or reload task.
//!
//! Memory: the limits bound a compiled rule. Measured (RSS over 1,000
//! compiled copies of each shape): a 256-term `||` chain of comparisons, the
//! heaviest shape found, holds about 116 KB; 32 nested `&&` levels 29 KB; a
//! 252-literal `in` list 34 KB; a 4,000-byte string literal 12 KB. The rules
//! file's own 1 MiB cap then bounds the whole set: at best ~1,100 bytes of
//! text per ~95 KB rule, under 100 MB however the file is written.

use std::{
    cell::Cell,
    panic::{catch_unwind, UnwindSafe},
    sync::Once,
};

/// Longest rule, in bytes. The shipped rules are under 200 bytes.
pub const MAX_RULE_BYTES: usize = 4096;
/// Deepest nesting of `(`, `[` and `{`. The shipped rules nest 1 deep; the
/// parser's own recursion limit (96 levels of expressions) stays out of reach.
pub const MAX_RULE_DEPTH: usize = 32;
/// Most terms: identifier paths (`features.recency_days`, `scores.ltv`, a
/// constant, a function name) and literals. The shipped rules have at most 8.
pub const MAX_RULE_TERMS: usize = 256;

/// Refuses a rule over any limit, saying which and where, without parsing it.
/// Strings and `//` comments are skipped as the CEL lexer skips them, so
/// brackets inside them neither count nor hide real ones.
pub fn check(rule: &str) -> Result<(), String> {
    if rule.len() > MAX_RULE_BYTES {
        return Err(format!(
            "the rule is {} bytes long, over the limit of {MAX_RULE_BYTES}; split it into several segments or name its thresholds as constants",
            rule.len()
        ));
    }
    let b = rule.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut terms = 0usize;
    // A name right after `.` selects a field of the previous term
    // (`features.x` is one term).
    let mut after_dot = false;
    let mut count_term = |at: usize| {
        terms += 1;
        if terms > MAX_RULE_TERMS {
            Err(format!(
                "the rule has more than {MAX_RULE_TERMS} terms (identifiers and literals; the {}th at offset {at}); split it into several segments",
                MAX_RULE_TERMS + 1
            ))
        } else {
            Ok(())
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                count_term(i)?;
                i = skip_string(b, i, false);
                after_dot = false;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_RULE_DEPTH {
                    return Err(format!(
                        "the rule nests brackets more than {MAX_RULE_DEPTH} deep (at offset {i}); flatten it"
                    ));
                }
                after_dot = false;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                after_dot = false;
            }
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => after_dot = true,
            c if c.is_ascii_digit() || c == b'.' => {
                count_term(i)?;
                i = skip_number(b, i);
                after_dot = false;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &rule[start..i];
                if matches!(b.get(i), Some(b'"' | b'\'')) && is_string_prefix(word) {
                    count_term(start)?;
                    let raw = word.contains(['r', 'R']);
                    i = skip_string(b, i, raw);
                } else if !after_dot && word != "in" {
                    count_term(start)?;
                }
                after_dot = false;
                continue;
            }
            c if c.is_ascii_whitespace() => {}
            _ => after_dot = false,
        }
        i += 1;
    }
    Ok(())
}

/// `r"…"`, `b'…'`, `rb"""…"""` and the other CEL string prefixes.
fn is_string_prefix(word: &str) -> bool {
    matches!(word.to_ascii_lowercase().as_str(), "r" | "b" | "rb" | "br")
}

/// The offset just past the string literal opening at `start` (or the end
/// of the rule if it never closes: the parser reports that). A one-line
/// string also ends at a line break, as the CEL lexer ends it.
fn skip_string(b: &[u8], start: usize, raw: bool) -> usize {
    let quote = b[start];
    let triple = b.get(start..start + 3) == Some(&[quote, quote, quote][..]);
    let mut i = start + if triple { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' if !raw => i += 2,
            q if q == quote && !triple => return i + 1,
            q if q == quote && b.get(i..i + 3) == Some(&[quote, quote, quote][..]) => return i + 3,
            b'\n' | b'\r' if !triple => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// The offset just past the number at `start`: digits, `.`, hex digits,
/// `x`, a `u` suffix, and an exponent with its sign.
fn skip_number(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        let exponent_sign = (c == b'+' || c == b'-')
            && i > start
            && matches!(b[i - 1], b'e' | b'E')
            && !b[start..i].starts_with(b"0x")
            && !b[start..i].starts_with(b"0X");
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

thread_local! {
    /// Set while [`contain`] runs on this thread: a panic here is a refused
    /// rule, reported in its reason, not a crash to print on stderr.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `compile` (parse and check one rule); a panic inside it becomes a
/// refusal of that rule. Nothing is shared with the caller while it runs
/// (`UnwindSafe`), so a panic leaves nothing half-updated behind.
///
/// The panic message goes into the reason (and from there to the log) rather
/// than through the default panic hook to stderr: a hook installed once
/// skips panics contained here and hands every other panic to the hook that
/// was there before.
pub fn contain<T>(compile: impl FnOnce() -> Result<T, String> + UnwindSafe) -> Result<T, String> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CONTAINED.with(|c| c.replace(true));
    let outcome = catch_unwind(compile);
    CONTAINED.with(|c| c.set(was));
    outcome.unwrap_or_else(|payload| {
        Err(format!(
            "the CEL parser failed on this rule (it panicked: {}); simplify the rule",
            panic_message(payload.as_ref())
        ))
    })
}

/// The message a panic carried (`panic!` with a literal or a format).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_shapes_pass() {
        for rule in [
            "scores.ltv >= LTV_TOP_DECILE && features.cart_abandoned_24h && features.checkout_visits_7d >= MIN_CHECKOUT_VISITS",
            "(features.monetary_mean >= PURCHASE_AMOUNT_HIGH && features.recency_days <= RECENT_DAYS)\n|| (features.email_engagement >= 30.0 && features.region == \"europe\")",
            "features.region in ['a', \"b\", r'c\\', b\"d\", '''e''', \"\"\"f\"\"\"] && 1.5e-3 < 0x1F + 3u // a comment ((((",
        ] {
            check(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        }
    }

    #[test]
    fn length_depth_and_terms_are_refused_before_parsing() {
        let deep = format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(check(&deep).unwrap_err().contains("over the limit of 4096"));
        let nested = format!("{}true{}", "(".repeat(33), ")".repeat(33));
        assert!(check(&nested).unwrap_err().contains("more than 32 deep"));
        let ok = format!("{}true{}", "([".repeat(16), "])".repeat(16));
        check(&ok).unwrap();
        let terms = vec!["x == 1"; 129].join(" || ");
        assert!(check(&terms).unwrap_err().contains("more than 256 terms"));
        check(&vec!["features.x == 1"; 128].join(" || ")).unwrap();
    }

    #[test]
    fn strings_and_comments_neither_count_nor_hide_brackets() {
        // Brackets in strings and comments are not nesting...
        check(&format!("x == '{}'", "(".repeat(100))).unwrap();
        check(&format!("x // {}\n == 1", "(".repeat(100))).unwrap();
        // ...and closing ones there cannot cancel real ones.
        let (open, close) = ("(".repeat(20), ")".repeat(20));
        let hidden = format!("{open} '{close}' // {close}\n {open} x {close}{close}");
        assert!(check(&hidden).unwrap_err().contains("deep"));
        // An escaped quote does not end a string; a raw string has no escapes.
        let escaped = format!("{open} '\\'{close}' {open} x {close}{close}");
        assert!(check(&escaped).unwrap_err().contains("deep"));
        let raw = format!("r'\\' + {}x{}", "(".repeat(40), ")".repeat(40));
        assert!(check(&raw).unwrap_err().contains("deep"));
        // A one-line string ends at a line break, as the lexer ends it.
        let broken = format!("'\n{}x{}'", "(".repeat(40), ")".repeat(40));
        assert!(check(&broken).unwrap_err().contains("deep"));
    }

    #[test]
    fn a_panic_inside_becomes_a_refusal() {
        let out: Result<(), String> = contain(|| panic!("Formatting argument out of range"));
        let reason = out.unwrap_err();
        assert!(
            reason.contains("panicked: Formatting argument out of range"),
            "{reason}"
        );
        assert_eq!(contain(|| Ok::<_, String>(7)), Ok(7));
        assert!(
            !CONTAINED.with(Cell::get),
            "the flag is reset after a panic"
        );
    }
}
