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

    /// Whether `text` starts with the prefix (the same answer as the SQL comparison).
    pub fn matches(&self, text: &str) -> bool {
        text.to_ascii_lowercase().starts_with(&self.folded)
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
        let p = SearchPrefix::new("Al");
        assert!(p.matches("alice") && p.matches("ALBERT"));
        assert!(!p.matches("bal"));
        assert_eq!(SearchPrefix::new("a_b%\\").like_pattern(), "a\\_b\\%\\\\%");
        assert!(
            !SearchPrefix::new("É").matches("émile"),
            "only ASCII is folded"
        );
        assert!(SearchPrefix::new("é").matches("émile"));
        assert!(!SearchPrefix::new("a_").matches("ab"), "_ is literal");
    }
}
