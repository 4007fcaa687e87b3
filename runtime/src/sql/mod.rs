//! Apiary's SQL surface on top of DataFusion's: statement splitting, placeholder rewriting, and
//! the namespace commands DataFusion does not know (`CREATE HIVE`, `USE`, `SHOW FRAMES`, ...).
//!
//! Everything works on sqlparser's tokens with their source spans, so rewritten SQL keeps the
//! user's text byte for byte outside the parts we touch (string literals, comments, quoting).

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};

mod classify;
#[cfg(test)]
mod fuzz;
mod operations;
pub mod travel;

use classify::Cursor;
pub use classify::{ColumnChange, Command, Layout, NameParts, classify};
pub use operations::DEFAULT_HISTORY_LIMIT;

/// A tokenised SQL text with the byte range of every token.
pub(super) struct Lexed<'a> {
    pub(super) text: &'a str,
    pub(super) tokens: Vec<(Token, std::ops::Range<usize>)>,
}

pub(super) fn lex(text: &str) -> Result<Lexed<'_>> {
    let dialect = GenericDialect {};
    let tokens: Vec<TokenWithSpan> = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| Error::Sql(e.to_string()))?;
    // Token starts, in order: walk the text once, never back (linear however long a line is).
    let mut walk = Walk::new(text);
    let starts: Vec<usize> = tokens.iter().map(|t| walk.offset(t.span.start)).collect();
    let mut out = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.into_iter().enumerate() {
        let start = starts[i];
        // Spans end inclusively at the last character on some tokens and exclusively on others;
        // the next token's start is the reliable end.
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        out.push((t.token, start..end.max(start)));
    }
    Ok(Lexed { text, tokens: out })
}

/// Converts sqlparser's (line, column) locations — 1-based, columns counted in chars — into
/// byte offsets, for locations given in increasing order.
struct Walk<'a> {
    text: &'a str,
    line: u64,
    col: u64,
    byte: usize,
}

impl<'a> Walk<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            line: 1,
            col: 1,
            byte: 0,
        }
    }

    fn offset(&mut self, loc: Location) -> usize {
        if (loc.line, loc.column) < (self.line, self.col) {
            // Out of order (never expected): start over rather than guess.
            *self = Walk::new(self.text);
        }
        let mut pos = self.byte;
        let mut chars = self.text[pos..].chars();
        while (self.line, self.col) < (loc.line, loc.column) {
            let Some(c) = chars.next() else {
                self.byte = self.text.len();
                return self.byte;
            };
            pos += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        self.byte = pos;
        pos
    }
}

pub(super) fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// Split a text holding several statements separated by `;` (outside strings and comments).
/// Empty statements are dropped. A text of more than `max_tokens` tokens (whitespace and
/// comments not counted) is refused.
pub fn split_statements(text: &str, max_tokens: usize) -> Result<Vec<String>> {
    let lexed = lex(text)?;
    let tokens = lexed
        .tokens
        .iter()
        .filter(|(t, _)| !is_trivia(t) && !matches!(t, Token::EOF))
        .count();
    if tokens > max_tokens {
        return Err(Error::Sql(format!(
            "the SQL text has {tokens} tokens; the limit is {max_tokens} (--max-sql-tokens)"
        )));
    }
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut meaningful = false;
    for (tok, range) in &lexed.tokens {
        match tok {
            Token::SemiColon => {
                if meaningful {
                    out.push(lexed.text[start..range.start].trim().to_string());
                }
                start = range.end;
                meaningful = false;
            }
            t if is_trivia(t) || matches!(t, Token::EOF) => {}
            _ => meaningful = true,
        }
    }
    if meaningful {
        out.push(lexed.text[start..].trim().to_string());
    }
    Ok(out)
}

/// Whether `c` next to a rewritten `$n` could be read as part of it (identifier characters in
/// any script, `$`, `?`, `#`, `@`): a space goes between them.
fn fuses(c: char) -> bool {
    !c.is_ascii() || c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '?' | '#' | '@')
}

/// Rewrite positional `?` markers to `$1..$n` (DataFusion reads every bare `?` as one and the same
/// parameter). Returns the new text and the number of parameters the statement takes. Mixing `?`
/// with `$n` in one statement is refused.
pub fn rewrite_placeholders(text: &str) -> Result<(String, usize)> {
    let lexed = lex(text)?;
    let mut out = String::with_capacity(text.len() + 8);
    let mut last = 0usize;
    let mut questions = 0usize;
    let mut max_dollar = 0usize;
    let mut word_end = None;
    for (tok, range) in &lexed.tokens {
        if let Token::Placeholder(p) = tok {
            if p == "?" {
                questions += 1;
                out.push_str(&lexed.text[last..range.start]);
                // Nor may it fuse with a word before it (`a?` → `a$1`, one identifier), even
                // one ending in a character that joins no word by itself (`#{?` → `#{$1`).
                if word_end == Some(range.start) || out.chars().last().is_some_and(fuses) {
                    out.push(' ');
                }
                out.push_str(&format!("${questions}"));
                // The placeholder token is one character; keep whatever followed it in the range.
                let after = range.start + 1;
                out.push_str(&lexed.text[after..range.end]);
                last = range.end;
                // `??` or `?x` must not fuse into one token (`$1$2`, `$1x`): keep them apart.
                let next = lexed.text[range.end..].chars().next();
                if after == range.end && next.is_some_and(fuses) {
                    out.push(' ');
                }
            } else if let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                max_dollar = max_dollar.max(n);
            }
        }
        word_end = matches!(tok, Token::Word(_)).then_some(range.end);
    }
    out.push_str(&lexed.text[last..]);
    if questions > 0 && max_dollar > 0 {
        return Err(Error::Sql(
            "a statement may use ? or $n parameters, not both".into(),
        ));
    }
    Ok((out, questions.max(max_dollar)))
}

/// Whether a statement is an `EXPLAIN` of any kind (comments skipped).
pub fn is_explain(text: &str) -> bool {
    lex(text)
        .ok()
        .is_some_and(|l| Cursor::new(&l).peek_word(0).as_deref() == Some("EXPLAIN"))
}

/// For `EXPLAIN [VERBOSE] <statement>` (not `EXPLAIN ANALYZE`, which runs the statement): the
/// explained statement's text. Comments between the words are skipped like whitespace.
pub fn explained(text: &str) -> Option<String> {
    let lexed = lex(text).ok()?;
    let c = Cursor::new(&lexed);
    if c.peek_word(0).as_deref() != Some("EXPLAIN") {
        return None;
    }
    let at = if c.peek_word(1).as_deref() == Some("VERBOSE") {
        2
    } else {
        1
    };
    if c.peek_word(at).as_deref() == Some("ANALYZE") {
        return None;
    }
    let (_, range) = c.toks.get(at)?;
    Some(text[range.start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let s = split_statements("select ';' ; -- c;\n select 2;;", 100).unwrap();
        assert_eq!(
            s,
            vec!["select ';'".to_string(), "-- c;\n select 2".to_string()]
        );
    }

    #[test]
    fn rewrites_question_marks() {
        let (t, n) = rewrite_placeholders("select ? , '?' , ?+1 from t where a = ?").unwrap();
        assert_eq!(t, "select $1 , '?' , $2+1 from t where a = $3");
        assert_eq!(n, 3);
        // Adjacent markers stay two tokens, so the parser judges the SQL as written.
        let (t, n) = rewrite_placeholders("select ??, ?a").unwrap();
        assert_eq!(t, "select $1 $2, $3 a");
        assert_eq!(n, 3);
        let (t, n) = rewrite_placeholders("select $2, $1").unwrap();
        assert_eq!(t, "select $2, $1");
        assert_eq!(n, 2);
        assert!(rewrite_placeholders("select ?, $1").is_err());
        let (t, _) = rewrite_placeholders("select 'é', ?").unwrap();
        assert_eq!(t, "select 'é', $1");
        // A word the marker follows directly stays a word of its own, whatever its last
        // character (`#{` is one word to the tokenizer, and `#{$1` would be another): found by
        // the property test `rewriting_placeholders_is_idempotent`.
        let (t, n) = rewrite_placeholders("#{?").unwrap();
        assert_eq!((t.as_str(), n), ("#{ $1", 1));
        assert_eq!(rewrite_placeholders(&t).unwrap(), (t.clone(), 1));
    }

    #[test]
    fn namespace_commands() {
        assert_eq!(
            classify("create hive if not exists Sales").unwrap(),
            Command::CreateHive {
                name: "sales".into(),
                if_not_exists: true
            }
        );
        assert_eq!(
            classify("CREATE SCHEMA h.b").unwrap(),
            Command::CreateBox {
                name: vec!["h".into(), "b".into()],
                if_not_exists: false
            }
        );
        assert_eq!(
            classify("drop box if exists b cascade").unwrap(),
            Command::DropBox {
                name: vec!["b".into()],
                if_exists: true,
                cascade: true
            }
        );
        assert_eq!(
            classify("use h.b").unwrap(),
            Command::Use {
                hive: Some("h".into()),
                box_name: Some("b".into())
            }
        );
        assert_eq!(
            classify("USE HIVE h").unwrap(),
            Command::Use {
                hive: Some("h".into()),
                box_name: None
            }
        );
        assert_eq!(
            classify("show frames in h.b").unwrap(),
            Command::ShowFrames {
                scope: Some(vec!["h".into(), "b".into()])
            }
        );
        assert_eq!(
            classify("describe h.b.f").unwrap(),
            Command::Describe {
                name: vec!["h".into(), "b".into(), "f".into()]
            }
        );
        assert!(matches!(
            classify("delete from t").unwrap(),
            Command::Sql { .. }
        ));
        assert!(classify("delete from t").unwrap().counts_rows());
        assert_eq!(
            classify("describe history b.f limit 5").unwrap(),
            Command::History {
                name: vec!["b".into(), "f".into()],
                limit: Some(5)
            }
        );
        assert_eq!(
            classify("VACUUM f RETAIN 24 HOURS DRY RUN").unwrap(),
            Command::Vacuum {
                name: vec!["f".into()],
                retain_hours: Some(24.0),
                dry_run: true
            }
        );
        assert_eq!(
            classify("optimize f where day >= '2026-01-01' zorder by (a, b)").unwrap(),
            Command::Optimize {
                name: vec!["f".into()],
                predicate: Some("day >= '2026-01-01'".into()),
                zorder: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            classify("ALTER TABLE f ADD COLUMNS (a DECIMAL(10, 2), b INT)").unwrap(),
            Command::AddColumns {
                name: vec!["f".into()],
                columns: vec![
                    ("a".into(), "DECIMAL(10, 2)".into()),
                    ("b".into(), "INT".into())
                ]
            }
        );
        assert!(classify("RESTORE f TO VERSION AS OF x").is_err());
        let change = |text: &str| match classify(text) {
            Ok(Command::AlterColumn { name, change }) if name == vec!["f".to_string()] => {
                Some(change)
            }
            _ => None,
        };
        let drop = |column: &str, if_exists| ColumnChange::Drop {
            column: column.into(),
            if_exists,
        };
        assert_eq!(
            change("ALTER TABLE f DROP COLUMN a"),
            Some(drop("a", false))
        );
        assert_eq!(
            change("alter table f drop if exists \"B\" cascade"),
            Some(drop("B", true))
        );
        assert_eq!(
            change("ALTER TABLE f RENAME COLUMN a TO b"),
            Some(ColumnChange::Rename {
                from: "a".into(),
                to: "b".into()
            })
        );
        assert_eq!(
            change("ALTER TABLE f ALTER COLUMN a SET DATA TYPE DECIMAL(10, 2)"),
            Some(ColumnChange::Retype {
                column: "a".into(),
                ty: "DECIMAL(10, 2)".into()
            })
        );
        assert_eq!(
            change("ALTER TABLE f ALTER a TYPE bigint"),
            Some(ColumnChange::Retype {
                column: "a".into(),
                ty: "bigint".into()
            })
        );
        assert_eq!(
            change("ALTER TABLE f ALTER COLUMN a DROP NOT NULL"),
            Some(ColumnChange::Nullability {
                column: "a".into(),
                nullable: true
            })
        );
        for bad in [
            "ALTER TABLE f DROP COLUMN",
            "ALTER TABLE f DROP COLUMN a, DROP COLUMN b",
            "ALTER TABLE f RENAME COLUMN a b",
            "ALTER TABLE f ALTER COLUMN a TYPE",
            "ALTER TABLE f ALTER COLUMN a TYPE INT USING a::int",
            "ALTER TABLE f ALTER COLUMN a SET DEFAULT 1",
        ] {
            assert!(change(bad).is_none(), "{bad}");
        }
        assert!(matches!(
            classify("ALTER TABLE f RENAME TO g"),
            Err(crate::error::Error::Unsupported(m)) if m.contains("CREATE TABLE")
        ));
        assert!(classify("use a.b.c").is_err());
    }

    #[test]
    fn strips_partitioned_by() {
        let c = classify("CREATE TABLE t (region VARCHAR, x INT) PARTITIONED BY (region)").unwrap();
        match c {
            Command::Sql { text, layout } => {
                assert_eq!(layout.partition_by, vec!["region".to_string()]);
                assert!(!text.to_ascii_uppercase().contains("PARTITIONED"));
                assert!(text.contains("(region VARCHAR, x INT)"));
            }
            other => panic!("{other:?}"),
        }
        let c = classify("create table t partitioned by (a) as select 1 as a, 2 as b").unwrap();
        match c {
            Command::Sql { text, layout } => {
                assert_eq!(layout.partition_by, vec!["a".to_string()]);
                assert!(text.contains("as select 1 as a"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn strips_cluster_by_next_to_partitioned_by() {
        let c = classify(
            "CREATE TABLE t (d DATE, r VARCHAR, x INT) CLUSTER BY (d, \"X\") PARTITIONED BY (r)",
        )
        .unwrap();
        match c {
            Command::Sql { text, layout } => {
                assert_eq!(layout.partition_by, vec!["r".to_string()]);
                assert_eq!(layout.cluster_by, vec!["d".to_string(), "X".to_string()]);
                let upper = text.to_ascii_uppercase();
                assert!(
                    !upper.contains("CLUSTER") && !upper.contains("PARTITIONED"),
                    "{text}"
                );
                assert!(text.contains("(d DATE, r VARCHAR, x INT)"));
            }
            other => panic!("{other:?}"),
        }
        // Only clauses before AS belong to the frame.
        match classify("CREATE TABLE t CLUSTER BY (a) AS SELECT 1 AS a").unwrap() {
            Command::Sql { text, layout } => {
                assert_eq!(layout.cluster_by, vec!["a".to_string()]);
                assert!(text.contains("AS SELECT 1 AS a"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        match classify("CREATE TABLE t AS SELECT * FROM s CLUSTER BY a").unwrap() {
            Command::Sql { layout, .. } => assert!(layout.is_empty()),
            other => panic!("{other:?}"),
        }
        for bad in [
            "CREATE TABLE t (a INT) CLUSTER BY ()",
            "CREATE TABLE t (a INT) CLUSTER (a)",
            "CREATE TABLE t (a INT) CLUSTER BY a",
            "CREATE TABLE t (a INT) CLUSTER BY (a) CLUSTER BY (a)",
            "CREATE TABLE t (a INT) CLUSTER BY (a + 1)",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
        assert_eq!(
            classify("ALTER TABLE s.f CLUSTER BY (a, b)").unwrap(),
            Command::ClusterBy {
                name: vec!["s".into(), "f".into()],
                columns: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            classify("alter table f cluster by none").unwrap(),
            Command::ClusterBy {
                name: vec!["f".into()],
                columns: vec![]
            }
        );
        assert!(classify("ALTER TABLE f CLUSTER BY a").is_err());
        assert!(classify("ALTER TABLE f CLUSTER BY (a) x").is_err());
    }

    #[test]
    fn query_detection() {
        assert!(classify("select 1").unwrap().returns_rows());
        assert!(classify("(select 1)").unwrap().returns_rows());
        assert!(
            classify("with a as (select 1) select * from a")
                .unwrap()
                .returns_rows()
        );
        assert!(classify("explain select 1").unwrap().returns_rows());
        assert_eq!(explained("explain select 1").as_deref(), Some("select 1"));
        assert_eq!(
            explained("EXPLAIN /* c */ VERBOSE\n select 2").as_deref(),
            Some("select 2")
        );
        assert_eq!(explained("explain analyze select 1"), None);
        assert_eq!(explained("explain /* c */ analyze select 1"), None);
        assert_eq!(explained("select 1"), None);
        assert!(classify("show hives").unwrap().returns_rows());
        assert!(!classify("insert into t values (1)").unwrap().returns_rows());
        assert!(classify("insert into t values (1)").unwrap().counts_rows());
        assert!(!classify("select 1").unwrap().counts_rows());
        assert!(
            !classify("create table t as select 1")
                .unwrap()
                .counts_rows()
        );
        assert!(!classify("create table t (a int)").unwrap().returns_rows());
    }

    #[test]
    fn what_takes_a_bee() {
        let bee = |sql: &str| classify(sql).unwrap().needs_bee();
        for sql in [
            "select 1",
            "insert into t values (1)",
            "create table t as select 1",
            "CREATE TABLE t (a INT) AS SELECT 1",
            "create or replace table t as (select 1)",
            "create table t as values (1)",
            "create table t as with a as (select 1) select * from a",
            "delete from t",
            "optimize t",
            "vacuum t",
            "alter table t add column b int",
        ] {
            assert!(bee(sql), "{sql}");
        }
        for sql in [
            "create table t (a int, \"as\" int)",
            "CREATE TABLE IF NOT EXISTS t (a INT DEFAULT (1)) PARTITIONED BY (a)",
            "create box b",
            "create hive h",
            "drop table t",
            "drop box b cascade",
            "use b",
            "set datafusion.execution.batch_size = 100",
            "create view v as select 1",
            "drop view v",
        ] {
            assert!(!bee(sql), "{sql}");
        }
    }
}
