//! The lakehouse statements DataFusion does not know, in Delta/Databricks spelling:
//! `DESCRIBE HISTORY`, `RESTORE`, `OPTIMIZE`, `VACUUM`, `ALTER TABLE … ADD COLUMN`,
//! `CREATE [OR REPLACE] VIEW` and `DROP VIEW`.

use datafusion::sql::sqlparser::tokenizer::Token;

use super::classify::{ColumnChange, Command, Cursor};
use super::travel::{self, AsOf};
use crate::error::{Error, Result};

/// Most history rows one `DESCRIBE HISTORY` returns when it names no limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 1_000;

/// `DESCRIBE HISTORY name [LIMIT n]` (after `DESCRIBE HISTORY`).
pub(super) fn history(c: &mut Cursor<'_>) -> Result<Command> {
    let name = c.name(3)?;
    let limit = if c.eat_word("LIMIT") {
        Some(c.number("LIMIT")? as usize)
    } else {
        None
    };
    c.expect_end("DESCRIBE HISTORY")?;
    Ok(Command::History { name, limit })
}

/// `RESTORE [TABLE] name [TO] VERSION AS OF n | TIMESTAMP AS OF '…'` (after `RESTORE`).
pub(super) fn restore(c: &mut Cursor<'_>) -> Result<Command> {
    let _ = c.eat_word("TABLE");
    let name = c.name(3)?;
    let _ = c.eat_word("TO");
    let to = if c.eat_words(&["VERSION", "AS", "OF"]) {
        AsOf::Version(c.number("VERSION AS OF")?)
    } else if c.eat_words(&["TIMESTAMP", "AS", "OF"]) {
        AsOf::Timestamp(travel::parse_instant(&c.string("TIMESTAMP AS OF")?)?)
    } else {
        return Err(Error::Sql(
            "expected RESTORE TABLE f TO VERSION AS OF n or TO TIMESTAMP AS OF '…'".into(),
        ));
    };
    c.expect_end("RESTORE")?;
    Ok(Command::Restore { name, to })
}

/// `OPTIMIZE name [WHERE predicate] [ZORDER BY (col, …)]` (after `OPTIMIZE`).
pub(super) fn optimize(c: &mut Cursor<'_>, text: &str) -> Result<Command> {
    let _ = c.eat_word("TABLE");
    let name = c.name(3)?;
    let mut predicate = None;
    if c.eat_word("WHERE") {
        let start = c.offset();
        while !c.done() && c.peek_word(0).as_deref() != Some("ZORDER") {
            c.skip();
        }
        let end = c.offset_or(text.len());
        let p = text[start..end].trim();
        if p.is_empty() {
            return Err(Error::Sql("OPTIMIZE … WHERE needs a predicate".into()));
        }
        predicate = Some(p.to_string());
    }
    let mut zorder = Vec::new();
    if c.eat_words(&["ZORDER", "BY"]) {
        let paren = c.eat_token(&Token::LParen);
        loop {
            zorder.push(c.ident()?);
            if !c.eat_token(&Token::Comma) {
                break;
            }
        }
        if paren && !c.eat_token(&Token::RParen) {
            return Err(Error::Sql("expected ) after ZORDER BY (…".into()));
        }
    }
    c.expect_end("OPTIMIZE")?;
    Ok(Command::Optimize {
        name,
        predicate,
        zorder,
    })
}

/// `VACUUM name [RETAIN n HOURS] [DRY RUN]` (after `VACUUM`).
pub(super) fn vacuum(c: &mut Cursor<'_>) -> Result<Command> {
    let _ = c.eat_word("TABLE");
    let name = c.name(3)?;
    let mut retain_hours = None;
    if c.eat_word("RETAIN") {
        let n = c.float("RETAIN")?;
        if !c.eat_word("HOURS") && !c.eat_word("HOUR") {
            return Err(Error::Sql("expected RETAIN n HOURS".into()));
        }
        retain_hours = Some(n);
    }
    let dry_run = c.eat_words(&["DRY", "RUN"]);
    c.expect_end("VACUUM")?;
    Ok(Command::Vacuum {
        name,
        retain_hours,
        dry_run,
    })
}

/// `ALTER TABLE name ADD COLUMN[S] [(] c type [, c type …] [)]` or
/// `ALTER TABLE name CLUSTER BY ((cols) | NONE)` (after `ALTER`).
pub(super) fn alter(c: &mut Cursor<'_>, text: &str) -> Result<Command> {
    if !(c.eat_word("TABLE") || c.eat_word("FRAME")) {
        return Err(Error::Unsupported(
            "ALTER other than ALTER TABLE … ADD COLUMN or CLUSTER BY".into(),
        ));
    }
    let name = c.name(3)?;
    if c.eat_words(&["CLUSTER", "BY"]) {
        let mut columns = Vec::new();
        if !c.eat_word("NONE") {
            if !c.eat_token(&Token::LParen) {
                return Err(Error::Sql(
                    "expected ALTER TABLE … CLUSTER BY (columns) or CLUSTER BY NONE".into(),
                ));
            }
            loop {
                columns.push(c.ident()?);
                if !c.eat_token(&Token::Comma) {
                    break;
                }
            }
            if !c.eat_token(&Token::RParen) {
                return Err(Error::Sql("expected ) after CLUSTER BY (…".into()));
            }
        }
        c.expect_end("ALTER TABLE … CLUSTER BY")?;
        return Ok(Command::ClusterBy { name, columns });
    }
    if let Some(change) = column_change(c, text)? {
        c.expect_end("ALTER TABLE")?;
        return Ok(Command::AlterColumn { name, change });
    }
    if !c.eat_word("ADD") {
        return Err(Error::Unsupported(
            "ALTER TABLE other than ADD COLUMN, DROP COLUMN, RENAME COLUMN, ALTER COLUMN and \
             CLUSTER BY"
                .into(),
        ));
    }
    let _ = c.eat_word("COLUMNS") || c.eat_word("COLUMN");
    let paren = c.eat_token(&Token::LParen);
    let mut columns = Vec::new();
    loop {
        let column = c.ident()?;
        let start = c.offset();
        // Parentheses and the angle brackets of `STRUCT<a INT, b VARCHAR>`, `MAP<…>` and
        // `ARRAY<…>` nest; a comma inside them is part of the type.
        let (mut depth, mut angles) = (0i32, 0i32);
        while let Some(t) = c.peek() {
            match t {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Lt => angles += 1,
                Token::Gt => angles -= 1,
                Token::ShiftRight => angles -= 2,
                Token::Comma if depth == 0 && angles <= 0 => break,
                _ => {}
            }
            c.skip();
        }
        let end = c.offset_or(text.len());
        let ty = text[start..end].trim();
        if ty.is_empty() {
            return Err(Error::Sql(format!("column {column} needs a type")));
        }
        columns.push((column, ty.to_string()));
        if !c.eat_token(&Token::Comma) {
            break;
        }
    }
    if paren && !c.eat_token(&Token::RParen) {
        return Err(Error::Sql("expected ) after ADD COLUMNS (…".into()));
    }
    c.expect_end("ALTER TABLE … ADD COLUMN")?;
    Ok(Command::AddColumns { name, columns })
}

/// `DROP [COLUMN] [IF EXISTS] c [CASCADE | RESTRICT]`, `RENAME [COLUMN] a TO b`,
/// `ALTER [COLUMN] c [SET DATA] TYPE t` and `ALTER [COLUMN] c {SET | DROP} NOT NULL` (after
/// `ALTER TABLE name`); `None` for another change.
fn column_change(c: &mut Cursor<'_>, text: &str) -> Result<Option<ColumnChange>> {
    if c.eat_word("DROP") {
        let _ = c.eat_word("COLUMN");
        let if_exists = c.eat_words(&["IF", "EXISTS"]);
        let column = c.ident()?;
        // Nothing depends on a column but views, which are read by name when queried.
        let _ = c.eat_word("CASCADE") || c.eat_word("RESTRICT");
        return Ok(Some(ColumnChange::Drop { column, if_exists }));
    }
    if c.eat_word("RENAME") {
        if c.eat_word("TO") {
            return Err(Error::Unsupported(
                "ALTER TABLE … RENAME TO (a frame's name is where its cells are stored: copy it \
                 with CREATE TABLE new AS SELECT * FROM old, then DROP TABLE old)"
                    .into(),
            ));
        }
        let _ = c.eat_word("COLUMN");
        let from = c.ident()?;
        if !c.eat_word("TO") {
            return Err(Error::Sql("expected RENAME COLUMN a TO b".into()));
        }
        let to = c.ident()?;
        return Ok(Some(ColumnChange::Rename { from, to }));
    }
    if !c.eat_word("ALTER") {
        return Ok(None);
    }
    let _ = c.eat_word("COLUMN");
    let column = c.ident()?;
    for (words, nullable) in [
        (["SET", "NOT", "NULL"], false),
        (["DROP", "NOT", "NULL"], true),
    ] {
        if c.eat_words(&words) {
            return Ok(Some(ColumnChange::Nullability { column, nullable }));
        }
    }
    let _ = c.eat_words(&["SET", "DATA"]);
    if !c.eat_word("TYPE") {
        return Err(Error::Unsupported(
            "ALTER COLUMN other than TYPE, SET NOT NULL and DROP NOT NULL".into(),
        ));
    }
    let start = c.offset_or(text.len());
    while let Some(t) = c.peek() {
        if matches!(t, Token::Word(w) if w.value.eq_ignore_ascii_case("USING")) {
            return Err(Error::Unsupported(
                "ALTER COLUMN … TYPE … USING (the values are cast to the new type)".into(),
            ));
        }
        c.skip();
    }
    let ty = text[start..].trim();
    if ty.is_empty() {
        return Err(Error::Sql(format!(
            "ALTER COLUMN {column} TYPE needs a type"
        )));
    }
    Ok(Some(ColumnChange::Retype {
        column,
        ty: ty.to_string(),
    }))
}

/// `CREATE [OR REPLACE] VIEW [IF NOT EXISTS] name AS query` (after `VIEW`).
pub(super) fn create_view(c: &mut Cursor<'_>, text: &str, or_replace: bool) -> Result<Command> {
    let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
    let name = c.name(3)?;
    if matches!(c.peek(), Some(Token::LParen)) {
        return Err(Error::Unsupported(
            "column lists on views (use aliases in the query)".into(),
        ));
    }
    if !c.eat_word("AS") {
        return Err(Error::Sql("expected CREATE VIEW name AS SELECT …".into()));
    }
    let query = text[c.offset()..].trim().to_string();
    if query.is_empty() {
        return Err(Error::Sql("CREATE VIEW … AS needs a query".into()));
    }
    Ok(Command::CreateView {
        name,
        query,
        or_replace,
        if_not_exists,
    })
}

/// `DROP VIEW [IF EXISTS] name` (after `VIEW`).
pub(super) fn drop_view(c: &mut Cursor<'_>) -> Result<Command> {
    let if_exists = c.eat_words(&["IF", "EXISTS"]);
    let name = c.name(3)?;
    c.expect_end("DROP VIEW")?;
    Ok(Command::DropView { name, if_exists })
}
