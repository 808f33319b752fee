//! How message text is cut into search terms, the same way for SQLite and PostgreSQL.
//!
//! Both databases index the terms computed here, not their own tokenizers' idea of the text:
//! a word in one is a word in the other, and CJK text is findable in both.
//!
//! - A **word** is a run of letters and digits (with their combining marks). It is indexed
//!   folded: compatibility-decomposed (NFKD), stripped of diacritics, lowercased — `Café`,
//!   `CAFÉ` and `cafe` are one term. Words longer than [`MAX_TERM_CHARS`] are cut there.
//! - **CJK** (Han ideographs, kana, Hangul) has no spaces between words, so each run of such
//!   characters is indexed as overlapping **bigrams** (`東京都` → `東京`, `京都`), the scheme of
//!   Lucene's CJK analyzer; a run of one character is indexed as itself. Every CJK character is
//!   indexed once more on its own, after the text's terms, so a one-character query finds it.
//!
//! Both indexes keep the terms a document was indexed under, so a change to how text is cut
//! here never breaks removing one; messages indexed before the change are found the old way
//! until the index is rebuilt (`anchorage replay`).
//!
//! A query is cut the same way. Every part must match (AND): a word of three characters or more
//! matches the words that start with it (`deploy` finds `deployment`), a shorter one matches
//! only itself, and a CJK run matches where the same characters stand together (its bigrams as
//! a phrase).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Longest term indexed; longer words are cut to this many characters (in the index and in
/// queries alike).
pub const MAX_TERM_CHARS: usize = 64;
/// Bytes of terms (with a separator each) indexed per message at most: the beginning of a
/// longer text is findable, the rest is not.
pub const MAX_INDEXED_BYTES: usize = 128 * 1024;
/// Terms indexed per message at most: the positions PostgreSQL keeps (1 to 16,383).
pub const MAX_INDEXED_TERMS: usize = 16_383;
/// The term between two runs of CJK text, so that a phrase never spans both: no query has it
/// (queries hold letters and digits only), and SQLite's `ascii` tokenizer keeps it as a token.
const GAP: &str = "\u{2063}";
/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// A word this long or longer matches as a prefix.
const PREFIX_FROM: usize = 3;

/// The text of a message body that search sees: a JSON string, or the string `text` of an
/// object. Anything else (an encrypted payload, a card) is not indexed.
pub fn searchable_text(body: &serde_json::Value) -> Option<&str> {
    match body {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.get("text").and_then(|t| t.as_str()),
        _ => None,
    }
}

/// A piece of the original text: a word, or one CJK character.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    /// Byte range in the original text.
    start: usize,
    end: usize,
    kind: PieceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PieceKind {
    /// A word, folded.
    Word(String),
    /// A CJK character (with the marks that follow it), compatibility-composed (NFKC: half-
    /// width kana, decomposed voiced kana and compatibility ideographs become the usual
    /// character); `joined` when it directly follows the previous CJK character.
    Cjk { unit: String, joined: bool },
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF // Hiragana, Katakana
        | 0x31F0..=0x31FF // Katakana phonetic extensions
        | 0x3400..=0x4DBF // CJK extension A
        | 0x4E00..=0x9FFF // CJK unified ideographs
        | 0xF900..=0xFAFF // CJK compatibility ideographs
        | 0xFF66..=0xFF9D // halfwidth Katakana
        | 0x1100..=0x11FF // Hangul Jamo
        | 0x3130..=0x318F // Hangul compatibility Jamo
        | 0xAC00..=0xD7AF // Hangul syllables
        | 0x20000..=0x3134F // CJK extensions B–G
    )
}

/// A mark that belongs to the CJK character before it: a combining mark (the voiced marks of
/// decomposed kana) or a halfwidth voiced mark.
fn is_cjk_mark(c: char) -> bool {
    is_combining_mark(c) || matches!(c, '\u{FF9E}' | '\u{FF9F}')
}

/// A CJK character with its marks, composed (NFKC), without what a composition may bring that
/// a term must not hold (a space, ASCII punctuation); the character itself if nothing is left.
fn compose(unit: &str) -> String {
    let composed: String = unit
        .nfkc()
        .filter(|c| !c.is_whitespace() && (!c.is_ascii() || c.is_ascii_alphanumeric()))
        .collect();
    if composed.is_empty() {
        unit.to_owned()
    } else {
        composed
    }
}

fn fold(word: &str) -> String {
    if word.is_ascii() {
        // Most words: NFKD leaves ASCII as it is and it has no diacritics, so folding is
        // lowercasing (what the general path below gives, without its per-character work).
        return word
            .bytes()
            .filter(u8::is_ascii_alphanumeric)
            .take(MAX_TERM_CHARS)
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
    }
    fold_unicode(word)
}

fn fold_unicode(word: &str) -> String {
    let mut out = String::new();
    for c in word
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
    {
        // Case folding beyond lowercasing: `ß` is `ss`, a final sigma is a sigma.
        match c {
            'ß' => out.push_str("ss"),
            'ς' => out.push('σ'),
            c if c.is_alphanumeric() => out.push(c),
            _ => {}
        }
    }
    out.chars().take(MAX_TERM_CHARS).collect()
}

/// Cuts `text` into words and CJK characters, in order.
fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut word: Option<usize> = None;
    let mut last_cjk_end: Option<usize> = None;
    let close = |out: &mut Vec<Piece>, start: usize, end: usize| {
        let folded = fold(&text[start..end]);
        if !folded.is_empty() {
            out.push(Piece {
                start,
                end,
                kind: PieceKind::Word(folded),
            });
        }
    };
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        if word.is_none() && last_cjk_end == Some(i) && is_cjk_mark(c) {
            // A mark of the CJK character before: part of it.
            if let Some(Piece {
                start,
                end: piece_end,
                kind: PieceKind::Cjk { unit, .. },
            }) = out.last_mut()
            {
                *piece_end = end;
                *unit = compose(&text[*start..end]);
            }
            last_cjk_end = Some(end);
        } else if is_cjk(c) {
            if let Some(start) = word.take() {
                close(&mut out, start, i);
            }
            out.push(Piece {
                start: i,
                end,
                kind: PieceKind::Cjk {
                    unit: compose(&text[i..end]),
                    joined: last_cjk_end == Some(i),
                },
            });
            last_cjk_end = Some(end);
        } else if c.is_alphanumeric() || (word.is_some() && is_combining_mark(c)) {
            word.get_or_insert(i);
        } else if let Some(start) = word.take() {
            close(&mut out, start, i);
        }
    }
    if let Some(start) = word {
        close(&mut out, start, text.len());
    }
    out
}

/// Runs of CJK characters standing together, as (first piece, past the last piece).
fn cjk_runs(pieces: &[Piece]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        if let PieceKind::Cjk { joined, .. } = p.kind {
            match runs.last_mut() {
                Some(run) if joined && run.1 == i => run.1 = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
    }
    runs
}

fn cjk_unit(p: &Piece) -> Option<&str> {
    match &p.kind {
        PieceKind::Cjk { unit, .. } => Some(unit),
        PieceKind::Word(_) => None,
    }
}

/// The terms `text` is indexed under, in order (a term's place is its position, for phrases).
pub fn index_terms(text: &str) -> Vec<String> {
    let pieces = pieces(text);
    let runs = cjk_runs(&pieces);
    let mut terms = Vec::new();
    let mut unigrams = Vec::new();
    let mut next_run = runs.iter().peekable();
    let mut i = 0;
    while i < pieces.len() {
        match &pieces[i].kind {
            PieceKind::Word(w) => {
                terms.push(w.clone());
                i += 1;
            }
            PieceKind::Cjk { .. } => {
                let Some(&(start, end)) = next_run.next() else {
                    break;
                };
                let units: Vec<&str> = pieces[start..end].iter().filter_map(cjk_unit).collect();
                terms.extend(grams(&units));
                // Runs apart in the text are apart in the index: a phrase never spans two.
                terms.push(GAP.to_owned());
                // A one-character run is indexed as itself already.
                if units.len() > 1 {
                    unigrams.extend(units.iter().map(|u| u.to_string()));
                }
                i = end;
            }
        }
    }
    terms.extend(unigrams);
    // A long text is indexed by its beginning: the index entry stays well within what either
    // database takes for one document, and within the positions PostgreSQL keeps.
    let mut bytes = 0;
    let within = terms
        .iter()
        .take(MAX_INDEXED_TERMS)
        .take_while(|t| {
            bytes += t.len() + 1;
            bytes <= MAX_INDEXED_BYTES
        })
        .count();
    terms.truncate(within);
    terms
}

/// Bigrams of a CJK run, or the run itself if it is one character.
fn grams(units: &[&str]) -> Vec<String> {
    if units.len() == 1 {
        return vec![units[0].to_owned()];
    }
    units.windows(2).map(|w| w.concat()).collect()
}

/// A parsed search query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// A word; `prefix` if it matches words that start with it.
    Word { term: String, prefix: bool },
    /// CJK characters standing together: their grams in order, and the characters.
    Cjk {
        grams: Vec<String>,
        units: Vec<String>,
    },
}

/// Why a query cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing in it to search for (only spaces or punctuation).
    #[error("the query has no word to search for")]
    Empty,
    /// Longer than [`MAX_QUERY_CHARS`].
    #[error("the query is longer than {MAX_QUERY_CHARS} characters")]
    TooLong,
}

impl Query {
    /// Cuts `q` the way text is indexed.
    pub fn parse(q: &str) -> Result<Query, QueryError> {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(QueryError::TooLong);
        }
        let pieces = pieces(q);
        let runs = cjk_runs(&pieces);
        let mut parts = Vec::new();
        let mut next_run = runs.iter();
        let mut i = 0;
        while i < pieces.len() {
            match &pieces[i].kind {
                PieceKind::Word(w) => {
                    let part = Part::Word {
                        prefix: w.chars().count() >= PREFIX_FROM,
                        term: w.clone(),
                    };
                    if !parts.contains(&part) {
                        parts.push(part);
                    }
                    i += 1;
                }
                PieceKind::Cjk { .. } => {
                    let Some(&(start, end)) = next_run.next() else {
                        break;
                    };
                    let units: Vec<&str> = pieces[start..end].iter().filter_map(cjk_unit).collect();
                    let part = Part::Cjk {
                        grams: grams(&units),
                        units: units.iter().map(|u| u.to_string()).collect(),
                    };
                    if !parts.contains(&part) {
                        parts.push(part);
                    }
                    i = end;
                }
            }
        }
        if parts.is_empty() {
            return Err(QueryError::Empty);
        }
        Ok(Query { parts })
    }

    /// The query in SQLite FTS5 syntax. Terms hold only letters and digits, so quoting them
    /// is enough: nothing in a query is read as an operator.
    pub fn fts5(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Word { term, prefix } => {
                    format!("\"{term}\"{}", if *prefix { " *" } else { "" })
                }
                Part::Cjk { grams, .. } => format!("\"{}\"", grams.join(" ")),
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The query as a PostgreSQL `tsquery` literal (cast, not parsed by a text search
    /// configuration: the terms are taken as they are).
    pub fn tsquery(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Word { term, prefix } => {
                    format!("{}{}", quote(term), if *prefix { ":*" } else { "" })
                }
                Part::Cjk { grams, .. } => {
                    let phrase = grams.iter().map(|g| quote(g)).collect::<Vec<_>>();
                    format!("({})", phrase.join(" <-> "))
                }
            })
            .collect::<Vec<_>>()
            .join(" & ")
    }

    /// The query as a `tsquery` literal that also requires the document to be in one of
    /// `convs` (by their [`conversation_lexeme`]s): the index then yields only the documents
    /// of the conversations asked about.
    pub fn tsquery_within(&self, convs: &[String]) -> String {
        let within: Vec<String> = convs.iter().map(|c| conversation_lexeme(c)).collect();
        format!("({}) & ({})", self.tsquery(), within.join(" | "))
    }

    /// What of `text` the query matched, as it is written there: each distinct piece once, in
    /// the order it first appears, at most `max`.
    pub fn highlights(&self, text: &str, max: usize) -> Vec<String> {
        let pieces = pieces(text);
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for p in &pieces {
            if let PieceKind::Word(w) = &p.kind
                && self.parts.iter().any(|part| match part {
                    Part::Word { term, prefix: true } => w.starts_with(term.as_str()),
                    Part::Word { term, .. } => w == term,
                    Part::Cjk { .. } => false,
                })
            {
                spans.push((p.start, p.end));
            }
        }
        for (start, end) in cjk_runs(&pieces) {
            let run = &pieces[start..end];
            let units: Vec<&str> = run.iter().filter_map(cjk_unit).collect();
            for part in &self.parts {
                let Part::Cjk { units: wanted, .. } = part else {
                    continue;
                };
                if wanted.len() > units.len() {
                    continue;
                }
                for at in 0..=units.len() - wanted.len() {
                    if units[at..at + wanted.len()] == wanted[..] {
                        spans.push((run[at].start, run[at + wanted.len() - 1].end));
                    }
                }
            }
        }
        spans.sort_unstable();
        let mut out: Vec<String> = Vec::new();
        for (start, end) in spans {
            let piece = &text[start..end];
            if !out.iter().any(|o| o == piece) {
                out.push(piece.to_owned());
                if out.len() == max {
                    break;
                }
            }
        }
        out
    }
}

/// A term quoted for a `tsvector` or `tsquery` literal.
fn quote(term: &str) -> String {
    format!("'{}'", term.replace('\\', "\\\\").replace('\'', "''"))
}

/// The lexeme naming a document's conversation in PostgreSQL's index: `#` never appears in a
/// term, so no word of a text can be mistaken for it.
pub fn conversation_lexeme(conv: &str) -> String {
    quote(&format!("#{conv}"))
}

/// `terms` as a PostgreSQL `tsvector` literal with their positions (1-based, at most
/// [`MAX_INDEXED_TERMS`]); a [`GAP`] is a position left empty.
pub fn tsvector(terms: &[String]) -> String {
    terms
        .iter()
        .enumerate()
        .filter(|(_, t)| *t != GAP)
        .map(|(i, t)| format!("{}:{}", quote(t), i + 1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `terms` as the text SQLite's FTS5 indexes (its `ascii` tokenizer splits at the spaces and
/// keeps every other character of a term).
pub fn fts5_text(terms: &[String]) -> String {
    terms.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_are_folded() {
        assert_eq!(
            index_terms("Café, CAFÉ & cafe — naïve Straße ﬁne №5"),
            ["cafe", "cafe", "cafe", "naive", "strasse", "fine", "5"]
        );
        // Full case folding: the sharp s and the final sigma.
        assert_eq!(index_terms("GRÜSSE Grüße"), ["grusse", "grusse"]);
        assert_eq!(index_terms("ΣΊΣΥΦΟΣ Σίσυφος"), ["σισυφοσ", "σισυφοσ"]);
    }

    #[test]
    fn cjk_is_indexed_in_bigrams_and_characters() {
        assert_eq!(
            index_terms("東京都 ok 猫"),
            ["東京", "京都", GAP, "ok", "猫", GAP, "東", "京", "都"]
        );
        // A lone character is indexed once.
        assert_eq!(index_terms("猫"), ["猫", GAP]);
        assert_eq!(
            index_terms("안녕하세요"),
            [
                "안녕", "녕하", "하세", "세요", GAP, "안", "녕", "하", "세", "요"
            ]
        );
    }

    #[test]
    fn runs_apart_are_apart_in_the_index() {
        // `東京、京都` holds the pairs of `東京都`, but not standing together.
        let terms = index_terms("東京、京都");
        assert_eq!(&terms[..4], ["東京", GAP, "京都", GAP]);
        let q = Query::parse("東京都").expect("parses");
        assert!(q.highlights("東京、京都", 16).is_empty());
        assert_eq!(tsvector(&terms[..3]), "'東京':1 '京都':3");
    }

    #[test]
    fn cjk_is_composed_like_words_are_folded() {
        // Decomposed voiced kana (as some input methods write it) and halfwidth kana index
        // as the usual characters, and are found by them.
        let decomposed = "か\u{3099}っこう";
        assert_eq!(index_terms(decomposed)[..3], ["がっ", "っこ", "こう"]);
        assert_eq!(index_terms("ｶﾀｶﾅ ｶﾞ")[..3], ["カタ", "タカ", "カナ"]);
        assert!(index_terms("ｶﾞ").contains(&"ガ".to_owned()));
        let q = Query::parse("がっこう").expect("parses");
        assert_eq!(q.highlights(decomposed, 16), [decomposed]);
    }

    #[test]
    fn queries_cut_like_text() {
        let q = Query::parse("Deploy 東京 to").expect("parses");
        assert_eq!(q.fts5(), "\"deploy\" * AND \"東京\" AND \"to\"");
        assert_eq!(q.tsquery(), "'deploy':* & ('東京') & 'to'");
        let q = Query::parse("東京都").expect("parses");
        assert_eq!(q.fts5(), "\"東京 京都\"");
        assert_eq!(q.tsquery(), "('東京' <-> '京都')");
        assert_eq!(
            q.tsquery_within(&["ops".into(), "it's".into()]),
            "(('東京' <-> '京都')) & ('#ops' | '#it''s')"
        );
        assert_eq!(Query::parse(" ,.;  "), Err(QueryError::Empty));
        assert_eq!(Query::parse(&"a ".repeat(17)).map(|q| q.parts.len()), Ok(1));
        assert_eq!(Query::parse(&"x".repeat(257)), Err(QueryError::TooLong));
    }

    #[test]
    fn operators_in_a_query_are_words() {
        let q = Query::parse("\"a\" OR b* NEAR(c) -d ' && !e <-> f:*").expect("parses");
        assert_eq!(
            q.fts5(),
            "\"a\" AND \"or\" AND \"b\" AND \"near\" * AND \"c\" AND \"d\" AND \"e\" AND \"f\""
        );
        assert_eq!(
            q.tsquery(),
            "'a' & 'or' & 'b' & 'near':* & 'c' & 'd' & 'e' & 'f'"
        );
    }

    #[test]
    fn highlights_are_the_original_text() {
        let q = Query::parse("cafe 京都").expect("parses");
        assert_eq!(
            q.highlights("Meet at the CAFÉ in 東京都, then Cafés 京都!", 16),
            ["CAFÉ", "京都", "Cafés"]
        );
        assert!(q.highlights("nothing here", 16).is_empty());
    }

    #[test]
    fn a_long_text_is_indexed_by_its_beginning() {
        let text = "lorem ".repeat(100_000);
        let terms = index_terms(&text);
        assert_eq!(terms.len(), MAX_INDEXED_TERMS);
        let text = format!("{} ", "w".repeat(60)).repeat(10_000);
        let terms = index_terms(&text);
        assert!(terms.len() < MAX_INDEXED_TERMS);
        assert!(fts5_text(&terms).len() <= MAX_INDEXED_BYTES);
        assert!(fts5_text(&terms).len() > MAX_INDEXED_BYTES - 64);
    }

    #[test]
    fn body_text() {
        assert_eq!(searchable_text(&serde_json::json!("hi")), Some("hi"));
        assert_eq!(
            searchable_text(&serde_json::json!({"text": "hi", "x": 1})),
            Some("hi")
        );
        assert_eq!(
            searchable_text(&serde_json::json!({"ciphertext": "…"})),
            None
        );
        assert_eq!(searchable_text(&serde_json::json!(12)), None);
    }

    #[test]
    fn literals_quote_what_they_hold() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(tsvector(&["a".to_owned(), "b".to_owned()]), "'a':1 'b':2");
    }

    proptest! {
        /// Whatever the text, a query made of any of its words finds it: the terms of the
        /// word's query are among the text's terms (prefix parts as prefixes of one).
        #[test]
        fn a_word_of_the_text_finds_the_text(text in "\\PC{0,80}", pick in 0usize..40) {
            let terms = index_terms(&text);
            let pieces = pieces(&text);
            if pieces.is_empty() {
                return Ok(());
            }
            let p = &pieces[pick % pieces.len()];
            let q = Query::parse(&text[p.start..p.end]).expect("a piece is a query");
            for part in &q.parts {
                match part {
                    Part::Word { term, prefix } => {
                        let found = terms.iter().any(|t| {
                            if *prefix { t.starts_with(term.as_str()) } else { t == term }
                        });
                        prop_assert!(found, "{term} not among {terms:?}");
                    }
                    Part::Cjk { grams, .. } => {
                        for g in grams {
                            prop_assert!(terms.contains(g));
                        }
                    }
                }
            }
            prop_assert!(!q.highlights(&text, 16).is_empty());
        }

        /// An ASCII word folds as the general path folds it.
        #[test]
        fn ascii_words_fold_as_any_word(word in "[ -~]{0,100}") {
            prop_assert_eq!(fold(&word), fold_unicode(&word));
        }

        /// Terms hold no character the query syntaxes or the `ascii` tokenizer treat
        /// specially (no ASCII but letters and digits, no space), and never more than the cap.
        #[test]
        fn terms_are_plain(text in "\\PC{0,200}") {
            for t in index_terms(&text) {
                prop_assert!(!t.is_empty() && t.chars().count() <= MAX_TERM_CHARS);
                prop_assert!(
                    !t.chars().any(|c| c.is_whitespace() || (c.is_ascii() && !c.is_ascii_alphanumeric())),
                    "{t:?}"
                );
            }
        }
    }
}
