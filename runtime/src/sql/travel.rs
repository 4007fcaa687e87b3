//! Time travel: `f VERSION AS OF 3` and `f TIMESTAMP AS OF '2026-12-01 10:00:00'` after a frame
//! name (Delta/Databricks spelling).
//!
//! DataFusion's dialect does not parse these clauses, so they are rewritten on the tokens: the
//! frame name's last part and the clause become one quoted part, `"f@v3"` or
//! `"f@t2026-12-01 10:00:00"`, which no frame can be named (`@` is not allowed in names). The
//! per-statement catalog splits it again and loads the frame at that version, so any number of
//! frames — or one frame at several versions — can be read in one statement.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::sqlparser::tokenizer::Token;

use super::{is_trivia, lex};
use crate::error::{Error, Result};

/// Which version of a frame a statement reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Version(i64),
    Timestamp(DateTime<Utc>),
}

/// Rewrite every `VERSION AS OF n` / `TIMESTAMP AS OF '…'` that follows a name; `None` when the
/// text has none.
pub fn rewrite(text: &str) -> Result<Option<String>> {
    let lexed = lex(text)?;
    let m: Vec<usize> = (0..lexed.tokens.len())
        .filter(|&i| !is_trivia(&lexed.tokens[i].0) && !matches!(lexed.tokens[i].0, Token::EOF))
        .collect();
    let word = |k: usize, kw: &str| {
        m.get(k).is_some_and(|&i| {
            matches!(&lexed.tokens[i].0, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
        })
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0usize;
    let mut k = 1usize;
    let mut changed = false;
    while k + 2 < m.len() {
        let version = word(k, "VERSION");
        let timestamp = word(k, "TIMESTAMP");
        if !((version || timestamp) && word(k + 1, "AS") && word(k + 2, "OF")) {
            k += 1;
            continue;
        }
        let value = m.get(k + 3).map(|&i| &lexed.tokens[i].0);
        let mark = match (version, value) {
            (true, Some(Token::Number(n, _))) => {
                let v: i64 = n.parse().map_err(|_| {
                    Error::Sql(format!("VERSION AS OF takes a version number, not {n}"))
                })?;
                format!("v{v}")
            }
            (false, Some(Token::SingleQuotedString(s))) => {
                parse_instant(s)?;
                format!("t{s}")
            }
            // Something else (`x::timestamp AS of`, an alias named "of"): not ours.
            _ => {
                k += 1;
                continue;
            }
        };
        let name = &lexed.tokens[m[k - 1]];
        let Token::Word(w) = &name.0 else {
            return Err(Error::Sql(
                "VERSION AS OF and TIMESTAMP AS OF follow a frame name".into(),
            ));
        };
        // Unquoted names are folded to lower case, as the planner would fold them.
        let part = match w.quote_style {
            Some(_) => w.value.clone(),
            None => w.value.to_lowercase(),
        };
        let quoted = format!("{part}@{mark}").replace('"', "\"\"");
        out.push_str(&text[copied..name.1.start]);
        out.push('"');
        out.push_str(&quoted);
        out.push('"');
        copied = lexed.tokens[m[k + 3]].1.end;
        // Keep the whitespace after the clause.
        if let Some(next) = m.get(k + 3).map(|&i| i + 1)
            && let Some((t, r)) = lexed.tokens.get(next)
            && is_trivia(t)
        {
            out.push_str(&text[r.clone()]);
            copied = r.end;
        }
        changed = true;
        k += 4;
    }
    if !changed {
        return Ok(None);
    }
    out.push_str(&text[copied..]);
    Ok(Some(out))
}

/// `"f@v3"` → `("f", Some(Version(3)))`; a part without `@` is returned as it is.
pub fn split(part: &str) -> Result<(&str, Option<AsOf>)> {
    let Some((name, mark)) = part.split_once('@') else {
        return Ok((part, None));
    };
    let as_of = if let Some(v) = mark.strip_prefix('v') {
        AsOf::Version(
            v.parse()
                .map_err(|_| Error::Sql(format!("bad version in {part:?}")))?,
        )
    } else if let Some(t) = mark.strip_prefix('t') {
        AsOf::Timestamp(parse_instant(t)?)
    } else {
        return Err(Error::Sql(format!("invalid name {part:?}")));
    };
    Ok((name, Some(as_of)))
}

/// An instant as users write it: a date, a date and time (UTC), or either with a zone.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(Error::Sql(format!(
        "TIMESTAMP AS OF '{s}': expected an instant like '2026-12-01 10:00:00' (UTC) or \
         '2026-12-01T10:00:00+02:00'"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_become_one_quoted_part() {
        assert_eq!(
            rewrite(
                "SELECT * FROM h.b.F VERSION AS OF 3 JOIN g TIMESTAMP AS OF '2026-12-01' ON 1=1"
            )
            .unwrap()
            .unwrap(),
            "SELECT * FROM h.b.\"f@v3\" JOIN \"g@t2026-12-01\" ON 1=1"
        );
        assert_eq!(
            rewrite("select * from \"Q\" version as of 0 as x")
                .unwrap()
                .unwrap(),
            "select * from \"Q@v0\" as x"
        );
        assert_eq!(rewrite("SELECT version AS of FROM t").unwrap(), None);
        assert_eq!(rewrite("SELECT 'VERSION AS OF 3'").unwrap(), None);
        assert_eq!(rewrite("SELECT x::timestamp AS of FROM t").unwrap(), None);
        assert!(rewrite("SELECT * FROM f VERSION AS OF 1.5").is_err());
        assert!(rewrite("SELECT * FROM f TIMESTAMP AS OF 'yesterday'").is_err());
    }

    #[test]
    fn parts_split_back() {
        assert_eq!(split("f@v12").unwrap(), ("f", Some(AsOf::Version(12))));
        assert_eq!(split("f").unwrap(), ("f", None));
        let (_, at) = split("f@t2026-12-01 10:00:00+02:00").unwrap();
        assert_eq!(
            at,
            Some(AsOf::Timestamp(
                "2026-12-01T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
            ))
        );
        assert!(split("f@x1").is_err());
    }
}
