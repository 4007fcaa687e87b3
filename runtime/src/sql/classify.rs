//! Classifying one statement: Apiary's namespace commands, `DESCRIBE`, `PARTITIONED BY`,
//! `CLUSTER BY`, and everything else handed to DataFusion.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Word};

use super::travel::AsOf;
use super::{Lexed, is_trivia, lex, operations};
use crate::error::{Error, Result};

/// A possibly qualified name as written: 1 to 3 parts.
pub type NameParts = Vec<String>;

/// How a `CREATE TABLE` lays out its frame: what its `PARTITIONED BY (…)` and `CLUSTER BY (…)`
/// clauses named (cut out of the text DataFusion plans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    pub partition_by: Vec<String>,
    pub cluster_by: Vec<String>,
}

impl Layout {
    pub fn is_empty(&self) -> bool {
        self.partition_by.is_empty() && self.cluster_by.is_empty()
    }
}

/// One statement, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    CreateHive {
        name: String,
        if_not_exists: bool,
    },
    CreateBox {
        name: NameParts,
        if_not_exists: bool,
    },
    DropHive {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    DropBox {
        name: NameParts,
        if_exists: bool,
        cascade: bool,
    },
    DropFrames {
        names: Vec<NameParts>,
        if_exists: bool,
    },
    /// `USE HIVE h` (hive only), `USE BOX b` / `USE b` (box in the current hive), `USE h.b`.
    Use {
        hive: Option<String>,
        box_name: Option<String>,
    },
    ShowHives,
    ShowBoxes {
        hive: Option<String>,
    },
    ShowFrames {
        scope: Option<NameParts>,
    },
    /// `SHOW name`, `SHOW TIME ZONE` or `SHOW ALL` (`None`): the session's options, as
    /// `(name, value)` rows.
    ShowOptions {
        name: Option<String>,
    },
    Describe {
        name: NameParts,
    },
    /// Statements DataFusion plans. `layout` was cut out of a `CREATE TABLE`.
    Sql {
        text: String,
        layout: Layout,
    },
    /// `SET name = value` / `SET name TO value` (`value` set) and `RESET name` (`None`): a
    /// DataFusion option of the session.
    SetOption {
        name: String,
        value: Option<String>,
    },
    /// `DESCRIBE HISTORY f [LIMIT n]`: one row per commit, newest first.
    History {
        name: NameParts,
        limit: Option<usize>,
    },
    /// `RESTORE [TABLE] f TO VERSION AS OF n | TIMESTAMP AS OF '…'`.
    Restore {
        name: NameParts,
        to: AsOf,
    },
    /// `OPTIMIZE f [WHERE partition predicate] [ZORDER BY (cols)]`.
    Optimize {
        name: NameParts,
        predicate: Option<String>,
        zorder: Vec<String>,
    },
    /// `VACUUM f [RETAIN n HOURS] [DRY RUN]`.
    Vacuum {
        name: NameParts,
        retain_hours: Option<f64>,
        dry_run: bool,
    },
    /// `ALTER TABLE f CLUSTER BY (cols)`, or `CLUSTER BY NONE` (`columns` empty).
    ClusterBy {
        name: NameParts,
        columns: Vec<String>,
    },
    /// `ALTER TABLE f ADD COLUMN[S] c type, …` (types as written).
    AddColumns {
        name: NameParts,
        columns: Vec<(String, String)>,
    },
    /// `ALTER TABLE f DROP COLUMN …`, `RENAME COLUMN …`, `ALTER COLUMN …`: a change of one
    /// column that rewrites every cell.
    AlterColumn {
        name: NameParts,
        change: ColumnChange,
    },
    /// `CREATE [OR REPLACE] VIEW [IF NOT EXISTS] v AS query`.
    CreateView {
        name: NameParts,
        query: String,
        or_replace: bool,
        if_not_exists: bool,
    },
    DropView {
        name: NameParts,
        if_exists: bool,
    },
    /// Recognised but not supported (yet); the message says what.
    Unsupported(String),
}

/// What `ALTER TABLE … ` changes about one column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnChange {
    /// `DROP [COLUMN] [IF EXISTS] c`.
    Drop { column: String, if_exists: bool },
    /// `RENAME [COLUMN] a TO b`.
    Rename { from: String, to: String },
    /// `ALTER [COLUMN] c [SET DATA] TYPE t` (the type as written).
    Retype { column: String, ty: String },
    /// `ALTER [COLUMN] c SET NOT NULL` (`nullable` false) or `DROP NOT NULL`.
    Nullability { column: String, nullable: bool },
}

impl Command {
    /// Whether the statement returns rows (a query) rather than a count.
    pub fn returns_rows(&self) -> bool {
        match self {
            Command::ShowHives
            | Command::ShowBoxes { .. }
            | Command::ShowFrames { .. }
            | Command::ShowOptions { .. }
            | Command::Describe { .. }
            | Command::History { .. }
            | Command::Vacuum { dry_run: true, .. } => true,
            Command::Sql { text, .. } => sql_returns_rows(text),
            _ => false,
        }
    }

    /// Whether running it takes a bee: anything that reads or writes rows does. A change to
    /// the namespace alone (hives, boxes, views, options, dropping frames, creating an empty
    /// one) does no work a bee bounds, and must not hold one of a node's few bees while it
    /// waits for storage or for another writer's creation of its name: on a 2-bee node a
    /// `CREATE TABLE IF NOT EXISTS` waiting a minute for a long CTAS left every other
    /// statement queued behind them.
    pub fn needs_bee(&self) -> bool {
        match self {
            Command::CreateHive { .. }
            | Command::CreateBox { .. }
            | Command::DropHive { .. }
            | Command::DropBox { .. }
            | Command::DropFrames { .. }
            | Command::Use { .. }
            | Command::SetOption { .. }
            | Command::CreateView { .. }
            | Command::DropView { .. } => false,
            Command::Sql { text, .. } => !creates_empty_table(text),
            _ => true,
        }
    }

    /// Whether the statement changes rows and, run as a query, answers one `count` row (as
    /// DataFusion and other servers do for `INSERT`).
    pub fn counts_rows(&self) -> bool {
        match self {
            Command::Restore { .. }
            | Command::Optimize { .. }
            | Command::Vacuum { dry_run: false, .. } => true,
            Command::Sql { text, .. } => {
                matches!(
                    first_keyword(text),
                    Some(
                        Keyword::INSERT
                            | Keyword::REPLACE
                            | Keyword::DELETE
                            | Keyword::UPDATE
                            | Keyword::MERGE
                            | Keyword::TRUNCATE
                    )
                )
            }
            _ => false,
        }
    }
}

/// Whether a DataFusion statement is a `CREATE … TABLE` with no query (columns only, or
/// `LIKE` another): no `AS`, `SELECT`, `WITH` or `VALUES` outside parentheses.
fn creates_empty_table(text: &str) -> bool {
    let Ok(lexed) = lex(text) else {
        return false;
    };
    let mut words = lexed
        .tokens
        .iter()
        .map(|(t, _)| t)
        .filter(|t| !is_trivia(t));
    if !matches!(words.next(), Some(Token::Word(w)) if w.keyword == Keyword::CREATE) {
        return false;
    }
    let (mut depth, mut table) = (0usize, false);
    for t in words {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 => match w.keyword {
                Keyword::TABLE => table = true,
                Keyword::AS | Keyword::SELECT | Keyword::WITH | Keyword::VALUES => return false,
                _ => {}
            },
            _ => {}
        }
    }
    table
}

/// The first keyword of a statement (past opening parentheses).
fn first_keyword(text: &str) -> Option<Keyword> {
    let lexed = lex(text).ok()?;
    let first = lexed
        .tokens
        .iter()
        .find(|(t, _)| !is_trivia(t) && !matches!(t, Token::LParen));
    match first {
        Some((Token::Word(w), _)) => Some(w.keyword),
        _ => None,
    }
}

/// Whether a DataFusion statement is a query (starts with SELECT, WITH, VALUES, EXPLAIN, ...).
fn sql_returns_rows(text: &str) -> bool {
    matches!(
        first_keyword(text),
        Some(
            Keyword::SELECT
                | Keyword::WITH
                | Keyword::VALUES
                | Keyword::EXPLAIN
                | Keyword::TABLE
                | Keyword::FROM
                // What reaches DataFusion of these answers rows: `SHOW COLUMNS`, `SHOW
                // FUNCTIONS`, `DESCRIBE SELECT …`.
                | Keyword::SHOW
                | Keyword::DESCRIBE
                | Keyword::DESC
        )
    )
}

/// The option `SHOW TIME ZONE` reads.
const TIME_ZONE: &str = "datafusion.execution.time_zone";

/// The rest of `SET name {= | TO} value` or `RESET name`; `None` for any other form.
fn set_option(c: &mut Cursor<'_>, reset: bool) -> Option<Command> {
    let name = c.name(8).ok()?.join(".").to_ascii_lowercase();
    let value = if reset {
        None
    } else {
        if !(matches!(c.peek(), Some(Token::Eq)) || c.peek_word(0).as_deref() == Some("TO")) {
            return None;
        }
        c.pos += 1;
        let negative = matches!(c.peek(), Some(Token::Minus));
        if negative {
            c.pos += 1;
        }
        let v = match c.peek()? {
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
            Token::Number(n, _) => format!("{}{n}", if negative { "-" } else { "" }),
            Token::Word(w) if !negative => w.value.clone(),
            _ => return None,
        };
        c.pos += 1;
        Some(v)
    };
    c.done().then_some(Command::SetOption { name, value })
}

/// The rest of the SQL-standard `SET TIME ZONE value` (`'UTC'`, `'+02:00'`,
/// `'Europe/Paris'`; `LOCAL` or `DEFAULT` reset it), and PostgreSQL's `SET TIMEZONE {= | TO}
/// value`: the session's `datafusion.execution.time_zone`. `None` for any other form.
fn set_time_zone(c: &mut Cursor<'_>) -> Option<Command> {
    if c.eat_word("TIMEZONE") {
        if !(matches!(c.peek(), Some(Token::Eq)) || c.peek_word(0).as_deref() == Some("TO")) {
            return None;
        }
        c.pos += 1;
    } else if !(c.eat_word("TIME") && c.eat_word("ZONE")) {
        return None;
    }
    let value = match c.peek()? {
        Token::SingleQuotedString(s) => Some(s.clone()),
        Token::Word(w) if matches!(w.value.to_ascii_uppercase().as_str(), "LOCAL" | "DEFAULT") => {
            None
        }
        _ => return None,
    };
    c.pos += 1;
    c.done().then(|| Command::SetOption {
        name: TIME_ZONE.to_string(),
        value,
    })
}

/// Cursor over the meaningful tokens of one statement.
pub(super) struct Cursor<'a> {
    pub(super) toks: Vec<&'a (Token, std::ops::Range<usize>)>,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(lexed: &'a Lexed<'a>) -> Self {
        Self {
            toks: lexed
                .tokens
                .iter()
                .filter(|(t, _)| !is_trivia(t) && !matches!(t, Token::EOF | Token::SemiColon))
                .collect(),
            pos: 0,
        }
    }

    pub(super) fn peek(&self) -> Option<&'a Token> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    pub(super) fn peek_word(&self, n: usize) -> Option<String> {
        match self.toks.get(self.pos + n).map(|(t, _)| t) {
            Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    pub(super) fn eat_word(&mut self, kw: &str) -> bool {
        if self.peek_word(0).as_deref() == Some(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn eat_words(&mut self, kws: &[&str]) -> bool {
        if kws
            .iter()
            .enumerate()
            .all(|(i, k)| self.peek_word(i).as_deref() == Some(*k))
        {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    pub(super) fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }

    pub(super) fn expect_end(&self, what: &str) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(Error::Sql(format!("unexpected {t} after {what}"))),
        }
    }

    pub(super) fn ident(&mut self) -> Result<String> {
        match self.peek() {
            Some(Token::Word(Word {
                value, quote_style, ..
            })) => {
                self.pos += 1;
                // Unquoted names fold to lowercase as in DataFusion; quoted ones are validated
                // (and lowercased) by the catalog, which refuses anything outside [a-z0-9_].
                Ok(if quote_style.is_some() {
                    value.clone()
                } else {
                    value.to_ascii_lowercase()
                })
            }
            Some(t) => Err(Error::Sql(format!("expected a name, found {t}"))),
            None => Err(Error::Sql("expected a name".into())),
        }
    }

    pub(super) fn name(&mut self, max_parts: usize) -> Result<NameParts> {
        let mut parts = vec![self.ident()?];
        while matches!(self.peek(), Some(Token::Period)) {
            self.pos += 1;
            parts.push(self.ident()?);
        }
        if parts.len() > max_parts {
            return Err(Error::Sql(format!(
                "{} has too many parts (at most {max_parts})",
                parts.join(".")
            )));
        }
        Ok(parts)
    }

    /// Byte offset of the current token (the text's end when there is none).
    pub(super) fn offset(&self) -> usize {
        self.toks
            .get(self.pos)
            .map(|(_, r)| r.start)
            .unwrap_or(usize::MAX)
    }

    /// Byte offset of the current token, or `end` past the last one.
    pub(super) fn offset_or(&self, end: usize) -> usize {
        self.toks.get(self.pos).map(|(_, r)| r.start).unwrap_or(end)
    }

    pub(super) fn skip(&mut self) {
        self.pos += 1;
    }

    pub(super) fn eat_token(&mut self, t: &Token) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A non-negative whole number.
    pub(super) fn number(&mut self, what: &str) -> Result<i64> {
        match self.peek() {
            Some(Token::Number(n, _)) => {
                let v =
                    n.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                        Error::Sql(format!("{what} takes a whole number, not {n}"))
                    })?;
                self.pos += 1;
                Ok(v)
            }
            _ => Err(Error::Sql(format!("{what} takes a whole number"))),
        }
    }

    /// A non-negative number.
    pub(super) fn float(&mut self, what: &str) -> Result<f64> {
        match self.peek() {
            Some(Token::Number(n, _)) => {
                let v = n
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| Error::Sql(format!("{what} takes a number, not {n}")))?;
                self.pos += 1;
                Ok(v)
            }
            _ => Err(Error::Sql(format!("{what} takes a number"))),
        }
    }

    /// A quoted string.
    pub(super) fn string(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Token::SingleQuotedString(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(Error::Sql(format!("{what} takes a quoted string"))),
        }
    }

    fn cascade(&mut self) -> bool {
        if self.eat_word("CASCADE") {
            true
        } else {
            self.eat_word("RESTRICT");
            false
        }
    }
}

/// Classify one statement (no `;` separators inside).
pub fn classify(text: &str) -> Result<Command> {
    let lexed = lex(text)?;
    let mut c = Cursor::new(&lexed);
    if c.done() {
        return Err(Error::Sql("empty statement".into()));
    }
    let first = c.peek_word(0).unwrap_or_default();
    match first.as_str() {
        "CREATE" => {
            c.pos += 1;
            if c.eat_word("HIVE") || c.eat_word("DATABASE") || c.eat_word("CATALOG") {
                let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
                let name = c.ident()?;
                c.expect_end("CREATE HIVE")?;
                return Ok(Command::CreateHive {
                    name,
                    if_not_exists,
                });
            }
            if c.eat_word("BOX") || c.eat_word("SCHEMA") {
                let if_not_exists = c.eat_words(&["IF", "NOT", "EXISTS"]);
                let name = c.name(2)?;
                c.expect_end("CREATE BOX")?;
                return Ok(Command::CreateBox {
                    name,
                    if_not_exists,
                });
            }
            if c.eat_words(&["EXTERNAL", "TABLE"]) {
                // DataFusion's own syntax, PARTITIONED BY included.
                return Ok(Command::Sql {
                    text: text.to_string(),
                    layout: Layout::default(),
                });
            }
            if c.eat_word("VIEW") {
                return operations::create_view(&mut c, text, false);
            }
            if c.eat_words(&["OR", "REPLACE", "VIEW"]) {
                return operations::create_view(&mut c, text, true);
            }
            strip_layout(&lexed)
        }
        "DROP" => {
            c.pos += 1;
            if c.eat_word("HIVE") || c.eat_word("DATABASE") || c.eat_word("CATALOG") {
                let if_exists = c.eat_words(&["IF", "EXISTS"]);
                let name = c.ident()?;
                let cascade = c.cascade();
                c.expect_end("DROP HIVE")?;
                return Ok(Command::DropHive {
                    name,
                    if_exists,
                    cascade,
                });
            }
            if c.eat_word("BOX") || c.eat_word("SCHEMA") {
                let if_exists = c.eat_words(&["IF", "EXISTS"]);
                let name = c.name(2)?;
                let cascade = c.cascade();
                c.expect_end("DROP BOX")?;
                return Ok(Command::DropBox {
                    name,
                    if_exists,
                    cascade,
                });
            }
            if c.eat_word("TABLE") || c.eat_word("FRAME") {
                let if_exists = c.eat_words(&["IF", "EXISTS"]);
                let mut names = vec![c.name(3)?];
                while matches!(c.peek(), Some(Token::Comma)) {
                    c.pos += 1;
                    names.push(c.name(3)?);
                }
                c.cascade();
                c.expect_end("DROP TABLE")?;
                return Ok(Command::DropFrames { names, if_exists });
            }
            if c.eat_word("VIEW") {
                return operations::drop_view(&mut c);
            }
            Err(Error::Sql(
                "expected DROP TABLE, DROP BOX or DROP HIVE".into(),
            ))
        }
        "SET" | "RESET" => {
            let reset = first == "RESET";
            c.pos += 1;
            let _ = c.eat_word("SESSION") || c.eat_word("LOCAL");
            let at = c.pos;
            if !reset && let Some(cmd) = set_time_zone(&mut c) {
                return Ok(cmd);
            }
            c.pos = at;
            match set_option(&mut c, reset) {
                Some(cmd) => Ok(cmd),
                // Other SET forms go to DataFusion's planner (which refuses them).
                None => Ok(Command::Sql {
                    text: text.to_string(),
                    layout: Layout::default(),
                }),
            }
        }
        "USE" => {
            c.pos += 1;
            let cmd = if c.eat_word("HIVE") || c.eat_word("DATABASE") || c.eat_word("CATALOG") {
                Command::Use {
                    hive: Some(c.ident()?),
                    box_name: None,
                }
            } else {
                // `USE BOX b`, `USE b` (a box of the current hive) and `USE h.b`.
                let _ = c.eat_word("BOX") || c.eat_word("SCHEMA");
                let parts = c.name(2)?;
                match parts.as_slice() {
                    [b] => Command::Use {
                        hive: None,
                        box_name: Some(b.clone()),
                    },
                    [h, b] => Command::Use {
                        hive: Some(h.clone()),
                        box_name: Some(b.clone()),
                    },
                    _ => unreachable_parts()?,
                }
            };
            c.expect_end("USE")?;
            Ok(cmd)
        }
        "SHOW" => {
            c.pos += 1;
            if c.eat_word("HIVES") || c.eat_word("DATABASES") || c.eat_word("CATALOGS") {
                c.expect_end("SHOW HIVES")?;
                return Ok(Command::ShowHives);
            }
            if c.eat_word("BOXES") || c.eat_word("SCHEMAS") {
                let hive = if c.eat_word("IN") || c.eat_word("FROM") {
                    Some(c.ident()?)
                } else {
                    None
                };
                c.expect_end("SHOW BOXES")?;
                return Ok(Command::ShowBoxes { hive });
            }
            if c.eat_word("FRAMES") || c.eat_word("TABLES") {
                let scope = if c.eat_word("IN") || c.eat_word("FROM") {
                    Some(c.name(2)?)
                } else {
                    None
                };
                c.expect_end("SHOW FRAMES")?;
                return Ok(Command::ShowFrames { scope });
            }
            if c.eat_word("ALL") {
                c.expect_end("SHOW ALL")?;
                return Ok(Command::ShowOptions { name: None });
            }
            if c.eat_word("TIMEZONE") || c.eat_words(&["TIME", "ZONE"]) {
                c.expect_end("SHOW TIME ZONE")?;
                return Ok(Command::ShowOptions {
                    name: Some(TIME_ZONE.into()),
                });
            }
            // `SHOW a.b…` alone (every option's name is dotted); any other `SHOW …`, such as
            // `SHOW FUNCTIONS`, is DataFusion's to plan or refuse.
            let at = c.pos;
            if let Ok(name) = c.name(8)
                && name.len() > 1
                && c.done()
            {
                return Ok(Command::ShowOptions {
                    name: Some(name.join(".").to_ascii_lowercase()),
                });
            }
            c.pos = at;
            // One other word (`SHOW VARIABLES`, `SHOW nope`): DataFusion would look it up as an
            // option and answer no rows. `SHOW FUNCTIONS` is DataFusion's, from
            // information_schema.
            if c.peek_word(0).is_some_and(|w| w != "FUNCTIONS") && c.toks.len() == c.pos + 1 {
                let word = &c.toks[c.pos].0;
                return Err(Error::Sql(format!(
                    "SHOW {word}: no such option (options have dotted names, as in SHOW \
                     datafusion.execution.batch_size); SHOW also takes HIVES, BOXES, FRAMES, \
                     FUNCTIONS, COLUMNS FROM <frame>, ALL and TIME ZONE"
                )));
            }
            Ok(Command::Sql {
                text: text.to_string(),
                layout: Layout::default(),
            })
        }
        "DESCRIBE" | "DESC" => {
            c.pos += 1;
            if c.peek_word(0).as_deref() == Some("HISTORY") && c.toks.len() > c.pos + 1 {
                c.pos += 1;
                return operations::history(&mut c);
            }
            if !(c.eat_word("TABLE") || c.eat_word("FRAME")) {
                // `DESCRIBE SELECT ...` and friends are DataFusion's.
                if matches!(
                    c.peek_word(0).as_deref(),
                    Some("SELECT" | "WITH" | "VALUES")
                ) {
                    return Ok(Command::Sql {
                        text: text.to_string(),
                        layout: Layout::default(),
                    });
                }
            }
            let name = c.name(3)?;
            c.expect_end("DESCRIBE")?;
            Ok(Command::Describe { name })
        }
        "ALTER" => {
            c.pos += 1;
            operations::alter(&mut c, text)
        }
        "RESTORE" => {
            c.pos += 1;
            operations::restore(&mut c)
        }
        "OPTIMIZE" => {
            c.pos += 1;
            operations::optimize(&mut c, text)
        }
        "VACUUM" => {
            c.pos += 1;
            operations::vacuum(&mut c)
        }
        "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => {
            Ok(Command::Unsupported("transactions".into()))
        }
        "COPY" => Ok(Command::Unsupported("COPY".into())),
        _ => Ok(Command::Sql {
            text: text.to_string(),
            layout: Layout::default(),
        }),
    }
}

fn unreachable_parts() -> Result<Command> {
    Err(Error::Sql("too many name parts".into()))
}

/// Cut `PARTITIONED BY (a, b)` and `CLUSTER BY (c)` out of a `CREATE TABLE` (DataFusion's parser
/// expects typed Hive partition columns after PARTITIONED BY and knows no CLUSTER BY; we take
/// Delta-style column names). Only clauses before the `AS` of a `CREATE TABLE … AS query` count.
fn strip_layout(lexed: &Lexed<'_>) -> Result<Command> {
    let meaningful: Vec<usize> = (0..lexed.tokens.len())
        .filter(|&i| !is_trivia(&lexed.tokens[i].0) && !matches!(lexed.tokens[i].0, Token::EOF))
        .collect();
    let word = |i: usize, kw: &str| -> bool {
        matches!(&lexed.tokens[i].0, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    };
    let mut layout = Layout::default();
    // Byte ranges of the clauses, to cut out of the text.
    let mut cuts: Vec<std::ops::Range<usize>> = Vec::new();
    let mut depth = 0i32;
    let mut k = 0;
    while k < meaningful.len() {
        let i = meaningful[k];
        match &lexed.tokens[i].0 {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth == 0 && word(i, "AS") {
            break;
        }
        let clause = match depth == 0 {
            true if word(i, "PARTITIONED") => "PARTITIONED",
            true if word(i, "CLUSTER") => "CLUSTER",
            _ => {
                k += 1;
                continue;
            }
        };
        let (cols, last) = column_list(lexed, &meaningful, k, clause)?;
        let list = match clause {
            "PARTITIONED" => &mut layout.partition_by,
            _ => &mut layout.cluster_by,
        };
        if !list.is_empty() {
            return Err(Error::Sql(format!("{clause} BY is given twice")));
        }
        *list = cols;
        cuts.push(lexed.tokens[i].1.start..lexed.tokens[meaningful[last]].1.end);
        k = last + 1;
    }
    let mut text = String::with_capacity(lexed.text.len());
    let mut at = 0;
    for cut in cuts {
        text.push_str(&lexed.text[at..cut.start]);
        text.push(' ');
        at = cut.end;
    }
    text.push_str(&lexed.text[at..]);
    Ok(Command::Sql { text, layout })
}

/// The column names of `<clause> BY (a, b)` starting at `meaningful[k]`, and the index (in
/// `meaningful`) of its closing parenthesis.
fn column_list(
    lexed: &Lexed<'_>,
    meaningful: &[usize],
    k: usize,
    clause: &str,
) -> Result<(Vec<String>, usize)> {
    let token = |j: usize| meaningful.get(j).map(|&t| &lexed.tokens[t].0);
    if !matches!(token(k + 1), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("BY"))
    {
        return Err(Error::Sql(format!("expected BY after {clause}")));
    }
    if !matches!(token(k + 2), Some(Token::LParen)) {
        return Err(Error::Sql(format!("expected ( after {clause} BY")));
    }
    let mut cols = Vec::new();
    let mut j = k + 3;
    loop {
        match token(j) {
            None => return Err(Error::Sql(format!("unterminated {clause} BY (...)"))),
            Some(Token::Word(w)) => cols.push(if w.quote_style.is_some() {
                w.value.clone()
            } else {
                w.value.to_ascii_lowercase()
            }),
            Some(Token::Comma) => {}
            Some(Token::RParen) => break,
            Some(other) => {
                return Err(Error::Sql(format!(
                    "{clause} BY takes column names, found {other}"
                )));
            }
        }
        j += 1;
    }
    if cols.is_empty() {
        return Err(Error::Sql(format!("{clause} BY needs at least one column")));
    }
    Ok((cols, j))
}
