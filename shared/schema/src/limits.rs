//! Limits every writer enforces, so that whatever one part of the system accepts, every reader
//! of the streams can decode.
//!
//! serde_json stops at 128 levels of nesting. A client's message body or an integration's
//! payload is wrapped in a frame or an event, and that in an envelope (two to three levels
//! more), so writers refuse JSON nested deeper than [`MAX_JSON_DEPTH`] before anything is
//! stored or acknowledged: nothing a writer accepts can be undecodable for a reader.

/// Deepest nesting of arrays and objects accepted in a client frame or an external event,
/// counting the frame or event object itself.
pub const MAX_JSON_DEPTH: usize = 32;

/// The deepest nesting of arrays and objects in a JSON text, without parsing it (brackets in
/// strings do not count). Garbage gives some number; the parser will refuse it anyway.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nesting_outside_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(br#"{"a":"[[[[{{{"}"#), 1);
        assert_eq!(json_depth(br#"{"a":"\"[[[","b":[]}"#), 2);
        assert_eq!(json_depth(br#"["\\",[[]]]"#), 3);
    }

    #[test]
    fn agrees_with_the_parser() {
        for n in [1usize, 31, 32, 33, 127, 200] {
            let text = format!("{}{}", "[".repeat(n), "]".repeat(n));
            assert_eq!(json_depth(text.as_bytes()), n);
            // serde_json refuses past 128: what we accept (≤ 32, plus an envelope) it reads.
            let parsed = serde_json::from_str::<serde_json::Value>(&text);
            assert_eq!(parsed.is_ok(), n <= 128, "{n}");
        }
    }
}
