//! Prefix search over member ids and nicknames, with one meaning everywhere: the server's
//! SQLite and PostgreSQL projections and a client's local store answer the same query alike.
//!
//! A prefix matches a text that starts with it, ignoring the case of ASCII letters (other
//! characters compare exactly: databases disagree on the case of the rest), and taking `%`,
//! `_` and `\` literally.

/// A search prefix, folded and escaped for a `LIKE … ESCAPE '\'` comparison against a column
/// folded with [`fold_ascii_sql`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPrefix {
    folded: String,
}

impl SearchPrefix {
    /// The prefix `text` stands for.
    pub fn new(text: &str) -> Self {
        Self {
            folded: text.to_ascii_lowercase(),
        }
    }

    /// The `LIKE` pattern: the folded prefix with its wildcards escaped, then `%`.
    pub fn like_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.folded.len() + 1);
        for c in self.folded.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        pattern
    }
}

/// SQL folding the ASCII letters of `column` to lower case and leaving every other character
/// as it is, in the same way on SQLite and PostgreSQL (SQLite's `lower` folds ASCII only;
/// PostgreSQL's would fold more, so it is not used there).
pub fn fold_ascii_sql(column: &str, postgres: bool) -> String {
    if postgres {
        format!("translate({column}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')")
    } else {
        format!("lower({column})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_case_is_ignored_wildcards_are_literal_the_rest_exact() {
        // Compared with columns folded the same way (see `fold_ascii_sql`); the answers on
        // both databases and the client store are checked end to end.
        assert_eq!(SearchPrefix::new("Al").like_pattern(), "al%");
        assert_eq!(
            SearchPrefix::new("É").like_pattern(),
            "É%",
            "only ASCII is folded"
        );
        assert_eq!(SearchPrefix::new("a_b%\\").like_pattern(), "a\\_b\\%\\\\%");
        assert_eq!(fold_ascii_sql("c", false), "lower(c)");
        assert!(fold_ascii_sql("c", true).starts_with("translate(c, 'ABC"));
    }
}
