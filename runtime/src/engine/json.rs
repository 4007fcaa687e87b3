//! JSON in text, read as PostgreSQL reads its `json` type: the operators `->`, `->>`, `#>` and
//! `#>>`, and the functions `json_extract_path`, `json_extract_path_text`, `json_typeof` and
//! `json_array_length` (each also under its `jsonb_` name). `JSON` and `JSONB` are text types.
//!
//! A lakehouse holds JSON as text (events, API payloads), and these were "Unsupported" or
//! "Invalid function". A value is read by [`Scanner`], which checks the whole document (a text
//! that is not JSON is an error, as PostgreSQL's cast to `json` is) and hands back the member or
//! element as it is written in the document: `->` answers the original text of the value, as
//! PostgreSQL's `json` does, with no re-serialising and no reordering of keys. A key given
//! twice answers its last value, as `jsonb` does.
//!
//! - `j -> 'key'`, `j -> 2` (from the end when negative): the member or element as JSON text,
//!   NULL when there is none or `j` is not an object / array;
//! - `j ->> …`: the same as text: a string unquoted and unescaped, JSON `null` as NULL;
//! - `j #> '{a,0,b}'`, `j #>> '{a,0,b}'`, `json_extract_path[_text](j, 'a', '0', 'b')`: along a
//!   path, each step a key of an object or an index of an array;
//! - `json_typeof(j)`: `object`, `array`, `string`, `number`, `boolean` or `null`;
//! - `json_array_length(j)`: the elements of an array; an error for anything else.
//!
//! Nesting is read without recursion, so a deep document cannot exhaust a thread's stack.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Builder, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::{
    DFSchema, ExprSchema, Result as DfResult, ScalarValue, exec_err, plan_err,
};
use datafusion::config::{ConfigOptions, Dialect};
use datafusion::functions::utils::make_scalar_function;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::function::Hint;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::parser::Statement as DfStatement;

use super::bounded::within_generated_bound;
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as SqlExpr};

/// Longest prefix of a document an error quotes.
const QUOTED: usize = 40;

/// The functions of this module, by their PostgreSQL names.
pub(super) fn scalars() -> Vec<Arc<ScalarUDF>> {
    [
        Json::Path { text: false },
        Json::Path { text: true },
        Json::Field { text: false },
        Json::Field { text: true },
        Json::Element { text: false },
        Json::Element { text: true },
        Json::TypeOf,
        Json::ArrayLength,
    ]
    .into_iter()
    .map(udf)
    .collect()
}

fn udf(kind: Json) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(JsonFn {
        kind,
        signature: Signature::user_defined(Volatility::Immutable),
        aliases: vec![kind.name().replacen("json_", "jsonb_", 1)],
    }))
}

/// What a function reads from its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Json {
    /// `json_extract_path[_text](j, VARIADIC path)`.
    Path {
        text: bool,
    },
    /// `j -> 'key'` (`json_object_field[_text]`).
    Field {
        text: bool,
    },
    /// `j -> 2` (`json_array_element[_text]`).
    Element {
        text: bool,
    },
    TypeOf,
    ArrayLength,
}

impl Json {
    fn name(self) -> &'static str {
        match self {
            Json::Path { text: false } => "json_extract_path",
            Json::Path { text: true } => "json_extract_path_text",
            Json::Field { text: false } => "json_object_field",
            Json::Field { text: true } => "json_object_field_text",
            Json::Element { text: false } => "json_array_element",
            Json::Element { text: true } => "json_array_element_text",
            Json::TypeOf => "json_typeof",
            Json::ArrayLength => "json_array_length",
        }
    }

    fn as_text(self) -> bool {
        matches!(
            self,
            Json::Path { text: true } | Json::Field { text: true } | Json::Element { text: true }
        )
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    kind: Json,
    signature: Signature,
    aliases: Vec<String>,
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

impl ScalarUDFImpl for JsonFn {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        let name = self.kind.name();
        let text = |t: &DataType| is_text(t) || t.is_null();
        let Some((doc, rest)) = arg_types.split_first() else {
            return plan_err!("{name}() takes a JSON document");
        };
        if !text(doc) {
            return plan_err!("{name}() takes a JSON document as text, not {doc}");
        }
        let steps = match self.kind {
            Json::TypeOf | Json::ArrayLength if rest.is_empty() => vec![],
            Json::Path { .. } if rest.iter().all(text) => vec![DataType::Utf8; rest.len()],
            Json::Field { .. } if rest.len() == 1 && text(&rest[0]) => vec![DataType::Utf8],
            // `j -> ?` planned before its parameter was bound to an integer.
            Json::Field { .. } if rest.len() == 1 && rest[0].is_integer() => vec![DataType::Int64],
            Json::Element { .. }
                if rest.len() == 1 && (rest[0].is_integer() || rest[0].is_null()) =>
            {
                vec![DataType::Int64]
            }
            _ => return plan_err!("{name}() does not take ({})", listed(arg_types)),
        };
        Ok(std::iter::once(DataType::Utf8).chain(steps).collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Json::ArrayLength => DataType::Int32,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let kind = self.kind;
        // A constant document stays one value (it was copied to every row: 1 GB for a 1 MB
        // document over 1,024 rows); the steps are columns of the batch's rows.
        make_scalar_function(
            move |arrays: &[ArrayRef]| answers(kind, arrays),
            vec![Hint::AcceptsSingular],
        )(&args.args)
    }
}

/// What `kind` answers for each row of `arrays`: the documents (one for every row when
/// constant), then the steps.
fn answers(kind: Json, arrays: &[ArrayRef]) -> DfResult<ArrayRef> {
    let Some((docs, steps)) = arrays.split_first() else {
        return exec_err!("{}() takes a JSON document", kind.name());
    };
    let docs = docs.as_string::<i32>();
    let rows = steps.first().map_or(docs.len(), |s| s.len());
    // A constant document is checked once.
    let constant = match docs.len() {
        1 if docs.is_valid(0) => Some(Some(checked(docs.value(0))?)),
        1 => Some(None),
        _ => None,
    };
    // The checked document of `row`, or NULL.
    let doc_at = |row: usize| -> DfResult<Option<&str>> {
        match constant {
            Some(doc) => Ok(doc),
            None if docs.is_valid(row) => checked(docs.value(row)).map(Some),
            None => Ok(None),
        }
    };
    let steps: Vec<&ArrayRef> = steps.iter().collect();
    if kind == Json::ArrayLength {
        let mut b = Int32Builder::with_capacity(rows);
        for row in 0..rows {
            b.append_option(doc_at(row)?.map(array_length).transpose()?);
        }
        return Ok(Arc::new(b.finish()));
    }
    let mut b = StringBuilder::with_capacity(rows, 0);
    let mut bytes = 0u128;
    for row in 0..rows {
        let Some(doc) = doc_at(row)? else {
            b.append_null();
            continue;
        };
        let found = match (kind, path_at(&steps, row, kind)) {
            (Json::TypeOf, _) => Some(type_of(doc).into()),
            (_, Some(path)) => match walk(doc, &path)? {
                Some(v) if kind.as_text() => text_of(v)?,
                Some(v) => Some(v.into()),
                None => None,
            },
            (_, None) => None,
        };
        // Every row's answer may be a large part of one large document.
        bytes += found.as_ref().map_or(0, |t| t.len()) as u128;
        within_generated_bound(kind.name(), bytes)?;
        b.append_option(found);
    }
    Ok(Arc::new(b.finish()))
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Step<'a> {
    /// A member of an object; in an array, the element its text names as an integer (a step of
    /// a path).
    Key(&'a str),
    /// A member of an object; nothing in an array (`->` with a text).
    Member(&'a str),
    /// An element of an array (from the end when negative); nothing in an object.
    Index(i64),
}

/// The path of row `row`, or `None` when a step is NULL (the answer is then NULL).
fn path_at<'a>(steps: &[&'a ArrayRef], row: usize, kind: Json) -> Option<Vec<Step<'a>>> {
    steps
        .iter()
        .map(|a| {
            if a.is_null(row) {
                return None;
            }
            Some(match (kind, a.data_type()) {
                (Json::Element { .. }, _) | (Json::Field { .. }, DataType::Int64) => {
                    Step::Index(a.as_primitive::<arrow::datatypes::Int64Type>().value(row))
                }
                (Json::Field { .. }, _) => Step::Member(a.as_string::<i32>().value(row)),
                _ => Step::Key(a.as_string::<i32>().value(row)),
            })
        })
        .collect()
}

fn listed(types: &[DataType]) -> String {
    types
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid(doc: &str) -> datafusion::error::DataFusionError {
    let shown: String = doc.chars().take(QUOTED).collect();
    let more = if shown.len() < doc.len() { "…" } else { "" };
    datafusion::error::DataFusionError::Execution(format!(
        "invalid input syntax for type json: '{shown}{more}'"
    ))
}

/// The value `path` leads to in `doc` (a [`checked`] document), as the document writes it.
fn walk<'a>(doc: &'a str, path: &[Step]) -> DfResult<Option<&'a str>> {
    let mut at = doc;
    for step in path {
        let Some(next) = child(at, step).map_err(|_| invalid(doc))? else {
            return Ok(None);
        };
        at = next;
    }
    Ok(Some(at))
}

/// `doc` without its surrounding white space, checked to be one JSON value.
fn checked(doc: &str) -> DfResult<&str> {
    let mut s = Scanner::new(doc);
    s.white();
    let start = s.at;
    s.value().map_err(|_| invalid(doc))?;
    let end = s.at;
    s.white();
    if s.at != doc.len() {
        return Err(invalid(doc));
    }
    Ok(&doc[start..end])
}

/// The member or element `step` names in `value` (a checked value, without white space
/// around it).
fn child<'a>(value: &'a str, step: &Step) -> Result<Option<&'a str>, Bad> {
    let mut s = Scanner::new(value);
    match (s.peek(), step) {
        (Some(b'{'), Step::Key(key) | Step::Member(key)) => {
            let mut found = None;
            s.at += 1;
            s.white();
            if s.peek() == Some(b'}') {
                return Ok(None);
            }
            loop {
                s.white();
                let name = s.string()?;
                s.white();
                s.expect(b':')?;
                s.white();
                let start = s.at;
                s.value()?;
                if unescaped(name)? == *key {
                    found = Some(&value[start..s.at]);
                }
                s.white();
                match s.next() {
                    Some(b',') => continue,
                    Some(b'}') => return Ok(found),
                    _ => return Err(Bad),
                }
            }
        }
        (Some(b'['), step) => {
            let index = match step {
                Step::Index(i) => *i,
                // A key names an element by its number, as PostgreSQL's paths do.
                Step::Key(k) => match k.trim().parse::<i64>() {
                    Ok(i) => i,
                    Err(_) => return Ok(None),
                },
                Step::Member(_) => return Ok(None),
            };
            let mut elements = Vec::new();
            s.at += 1;
            s.white();
            if s.peek() == Some(b']') {
                return Ok(None);
            }
            loop {
                s.white();
                let start = s.at;
                s.value()?;
                elements.push(&value[start..s.at]);
                s.white();
                match s.next() {
                    Some(b',') => continue,
                    Some(b']') => break,
                    _ => return Err(Bad),
                }
            }
            let n = elements.len() as i64;
            let i = if index < 0 { n + index } else { index };
            Ok((0..n).contains(&i).then(|| elements[i as usize]))
        }
        _ => Ok(None),
    }
}

/// A JSON value as text: a string unquoted and unescaped, `null` as NULL, anything else as
/// written.
fn text_of(value: &str) -> DfResult<Option<std::borrow::Cow<'_, str>>> {
    Ok(match value.as_bytes().first() {
        Some(b'"') => Some(unescaped(value).map_err(|_| invalid(value))?),
        Some(b'n') => None,
        _ => Some(value.into()),
    })
}

/// The type of a [`checked`] document.
fn type_of(doc: &str) -> &'static str {
    match doc.as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// The elements of a [`checked`] document that is an array.
fn array_length(doc: &str) -> DfResult<i32> {
    let mut s = Scanner::new(doc);
    match s.peek() {
        Some(b'[') => {}
        Some(b'{') => return exec_err!("cannot get array length of a non-array"),
        _ => return exec_err!("cannot get array length of a scalar"),
    }
    s.at += 1;
    s.white();
    if s.peek() == Some(b']') {
        return Ok(0);
    }
    let mut n = 0i32;
    loop {
        s.white();
        s.value().map_err(|_| invalid(doc))?;
        n = n.saturating_add(1);
        s.white();
        match s.next() {
            Some(b',') => continue,
            _ => return Ok(n),
        }
    }
}

/// A JSON string (with its quotes, checked) as the text it stands for.
fn unescaped(quoted: &str) -> Result<std::borrow::Cow<'_, str>, Bad> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .ok_or(Bad)?;
    if !inner.contains('\\') {
        return Ok(inner.into());
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next().ok_or(Bad)? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                fn unit(chars: &mut std::str::Chars) -> Result<u32, Bad> {
                    let hex: String = chars.take(4).collect();
                    u32::from_str_radix(&hex, 16).map_err(|_| Bad)
                }
                let high = unit(&mut chars)?;
                let code = if (0xD800..0xDC00).contains(&high) {
                    match (chars.next(), chars.next()) {
                        (Some('\\'), Some('u')) => {}
                        _ => return Err(Bad),
                    }
                    let low = unit(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(Bad);
                    }
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    high
                };
                // PostgreSQL's text cannot hold U+0000, nor can a lone surrogate be a char.
                match char::from_u32(code).filter(|c| *c != '\0') {
                    Some(c) => out.push(c),
                    None => return Err(Bad),
                }
            }
            _ => return Err(Bad),
        }
    }
    Ok(out.into())
}

/// Not JSON (the caller says where).
#[derive(Debug)]
struct Bad;

/// Reads JSON values from a text, checking them as it goes.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Result<(), Bad> {
        match self.next() {
            Some(x) if x == b => Ok(()),
            _ => Err(Bad),
        }
    }

    fn white(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Past one value, checked. Nesting is followed with a stack of its own, not by
    /// recursion: a document nested a million levels deep cannot exhaust the thread's stack.
    fn value(&mut self) -> Result<(), Bad> {
        // What closes each array and object open around the value being read, innermost last.
        let mut open: Vec<u8> = Vec::new();
        'value: loop {
            self.white();
            match self.peek().ok_or(Bad)? {
                b'{' => {
                    self.at += 1;
                    self.white();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        open.push(b'}');
                        self.member_name()?;
                        continue 'value;
                    }
                }
                b'[' => {
                    self.at += 1;
                    self.white();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        open.push(b']');
                        continue 'value;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.word(b"true")?,
                b'f' => self.word(b"false")?,
                b'n' => self.word(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(Bad),
            }
            // A value ended: it closes what it ends, or the next member or element follows.
            while let Some(&closer) = open.last() {
                self.white();
                match self.next() {
                    Some(b',') => {
                        if closer == b'}' {
                            self.member_name()?;
                        }
                        continue 'value;
                    }
                    Some(c) if c == closer => {
                        open.pop();
                    }
                    _ => return Err(Bad),
                }
            }
            return Ok(());
        }
    }

    /// Past a member's name and its colon.
    fn member_name(&mut self) -> Result<(), Bad> {
        self.white();
        self.string()?;
        self.white();
        self.expect(b':')
    }

    fn word(&mut self, w: &[u8]) -> Result<(), Bad> {
        match self.bytes[self.at..].starts_with(w) {
            true => {
                self.at += w.len();
                Ok(())
            }
            false => Err(Bad),
        }
    }

    /// Past a string; the string with its quotes.
    fn string(&mut self) -> Result<&'a str, Bad> {
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match self.next().ok_or(Bad)? {
                b'"' => break,
                b'\\' => match self.next().ok_or(Bad)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next().ok_or(Bad)?.is_ascii_hexdigit() {
                                return Err(Bad);
                            }
                        }
                    }
                    _ => return Err(Bad),
                },
                0..=0x1f => return Err(Bad),
                _ => {}
            }
        }
        // Quotes are ASCII, so the slice is on character boundaries.
        std::str::from_utf8(&self.bytes[start..self.at]).map_err(|_| Bad)
    }

    fn digits(&mut self) -> Result<(), Bad> {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        if self.at == start { Err(Bad) } else { Ok(()) }
    }

    fn number(&mut self) -> Result<(), Bad> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            _ => self.digits()?,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
        }
        Ok(())
    }
}

/// `statement` with `->`, `->>`, `#>` and `#>>` binding as PostgreSQL binds them, when it was
/// parsed in the generic dialect. That dialect binds them looser than comparisons, `IS`,
/// `LIKE`, `BETWEEN`, `IN` and `||`: `j ->> 'a' = 'x'` was `j ->> ('a' = 'x')`, and failed. In
/// PostgreSQL they bind tighter than those (and as tightly as `||`, left to right), so each such
/// operator takes back the left operand of the looser expression on its right.
pub(super) fn as_postgres_binds(statement: &mut DfStatement, options: &ConfigOptions) {
    if options.sql_parser.dialect != Dialect::Generic {
        return;
    }
    super::visit_parsed(statement, &mut super::EachExpr(rebind));
}

fn is_json_operator(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Arrow
            | BinaryOperator::LongArrow
            | BinaryOperator::HashArrow
            | BinaryOperator::HashLongArrow
    )
}

/// The left operand of `e` when PostgreSQL binds `e` looser than a JSON operator, or as tightly
/// (left to right): a comparison, `IS …`, `LIKE`, `BETWEEN`, `IN`, `||`.
fn loose_left(e: &mut SqlExpr) -> Option<&mut Box<SqlExpr>> {
    use BinaryOperator as B;
    match e {
        SqlExpr::BinaryOp { left, op, .. }
            if matches!(
                op,
                B::Eq
                    | B::NotEq
                    | B::Lt
                    | B::LtEq
                    | B::Gt
                    | B::GtEq
                    | B::Spaceship
                    | B::StringConcat
                    | B::PGRegexMatch
                    | B::PGRegexIMatch
                    | B::PGRegexNotMatch
                    | B::PGRegexNotIMatch
                    | B::PGLikeMatch
                    | B::PGILikeMatch
                    | B::PGNotLikeMatch
                    | B::PGNotILikeMatch
            ) || is_json_operator(op) =>
        {
            Some(left)
        }
        SqlExpr::AnyOp { left, .. } | SqlExpr::AllOp { left, .. } => Some(left),
        SqlExpr::IsNull(x)
        | SqlExpr::IsNotNull(x)
        | SqlExpr::IsTrue(x)
        | SqlExpr::IsNotTrue(x)
        | SqlExpr::IsFalse(x)
        | SqlExpr::IsNotFalse(x)
        | SqlExpr::IsUnknown(x)
        | SqlExpr::IsNotUnknown(x)
        | SqlExpr::IsDistinctFrom(x, _)
        | SqlExpr::IsNotDistinctFrom(x, _) => Some(x),
        SqlExpr::Like { expr, .. }
        | SqlExpr::ILike { expr, .. }
        | SqlExpr::SimilarTo { expr, .. }
        | SqlExpr::Between { expr, .. }
        | SqlExpr::InList { expr, .. }
        | SqlExpr::InSubquery { expr, .. } => Some(expr),
        _ => None,
    }
}

/// The right operand of `e` when PostgreSQL binds `e` looser than a JSON operator: a
/// comparison's, a `LIKE`'s pattern.
fn loose_right(e: &mut SqlExpr) -> Option<&mut Box<SqlExpr>> {
    use BinaryOperator as B;
    match e {
        SqlExpr::BinaryOp {
            right,
            op: B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq | B::Spaceship,
            ..
        } => Some(right),
        SqlExpr::Like { pattern, .. }
        | SqlExpr::ILike { pattern, .. }
        | SqlExpr::SimilarTo { pattern, .. } => Some(pattern),
        _ => None,
    }
}

/// Visited children first: `j OP (x cmp y)`, as the dialect read it, becomes `(j OP x) cmp y`,
/// and `(x cmp j) OP k` becomes `x cmp (j OP k)`.
fn rebind(e: &mut SqlExpr) -> ControlFlow<()> {
    let SqlExpr::BinaryOp { left, op, right } = e else {
        return ControlFlow::Continue(());
    };
    if !is_json_operator(op) {
        return ControlFlow::Continue(());
    }
    // Which side holds the looser expression that is to take the JSON operator in.
    let on_left = loose_right(left).is_some();
    if !on_left && loose_left(right).is_none() {
        return ControlFlow::Continue(());
    }
    let placeholder = || SqlExpr::Value(datafusion::sql::sqlparser::ast::Value::Null.into());
    let SqlExpr::BinaryOp { left, op, right } = std::mem::replace(e, placeholder()) else {
        return ControlFlow::Continue(());
    };
    let (mut outer, kept) = if on_left {
        (*left, right)
    } else {
        (*right, left)
    };
    let slot = match on_left {
        true => loose_right(&mut outer),
        false => loose_left(&mut outer),
    };
    if let Some(slot) = slot {
        let taken = Box::new(std::mem::replace(slot.as_mut(), placeholder()));
        let (left, right) = if on_left {
            (taken, kept)
        } else {
            (kept, taken)
        };
        let mut inner = SqlExpr::BinaryOp { left, op, right };
        let _ = rebind(&mut inner);
        **slot = inner;
    }
    *e = outer;
    ControlFlow::Continue(())
}

/// Plans `->`, `->>`, `#>` and `#>>` over text as the functions above.
#[derive(Debug, Default)]
pub(super) struct JsonOperators;

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        let (path, text) = match expr.op {
            BinaryOperator::Arrow => (false, false),
            BinaryOperator::LongArrow => (false, true),
            BinaryOperator::HashArrow => (true, false),
            BinaryOperator::HashLongArrow => (true, true),
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let type_of = |x: &Expr| x.get_type(schema as &dyn ExprSchema).ok();
        let left = type_of(&expr.left);
        if !left.as_ref().is_none_or(|t| is_text(t) || t.is_null()) {
            return Ok(PlannerResult::Original(expr));
        }
        let (kind, args) = match (path, type_of(&expr.right)) {
            (false, Some(t)) if t.is_integer() => {
                (Json::Element { text }, vec![expr.left, expr.right])
            }
            (false, _) => (Json::Field { text }, vec![expr.left, expr.right]),
            (true, _) => {
                let steps = path_steps(&expr.right)?;
                (
                    Json::Path { text },
                    std::iter::once(expr.left).chain(steps).collect(),
                )
            }
        };
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(udf(kind), args),
        )))
    }
}

/// The steps of a `#>` path: PostgreSQL's text-array literal (`'{a,0,"b c"}'`) or an `ARRAY[…]`
/// of texts.
fn path_steps(path: &Expr) -> DfResult<Vec<Expr>> {
    use datafusion::logical_expr::lit;
    match path {
        Expr::Literal(s, _) if s.try_as_str().is_some() => {
            let Some(Some(text)) = s.try_as_str() else {
                return Ok(vec![lit(ScalarValue::Utf8(None))]);
            };
            Ok(array_literal(text)?
                .into_iter()
                .map(|step| lit(ScalarValue::Utf8(step)))
                .collect())
        }
        Expr::ScalarFunction(f) if f.name() == "make_array" => Ok(f.args.clone()),
        _ => plan_err!(
            "the path of #> and #>> is a text-array literal ('{{a,0,b}}') or ARRAY[…] of texts"
        ),
    }
}

/// The elements of a one-dimensional PostgreSQL array literal of texts (an unquoted `NULL` is
/// NULL).
fn array_literal(text: &str) -> DfResult<Vec<Option<String>>> {
    let bad = || plan_err!("malformed array literal: \"{text}\"");
    let Some(inner) = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
    else {
        return bad();
    };
    if inner.trim().is_empty() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => item.push(c),
                        None => return bad(),
                    },
                    Some(c) => item.push(c),
                    None => return bad(),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '{' | '}' | '"') {
                    return bad();
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        out.push((quoted || !item.eq_ignore_ascii_case("null")).then_some(item));
        match chars.next() {
            Some(',') => continue,
            None => return Ok(out),
            Some(_) => return bad(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(doc: &'a str, path: &[Step]) -> Option<&'a str> {
        walk(checked(doc).unwrap(), path).unwrap()
    }

    #[test]
    fn values_come_back_as_written() {
        let doc = r#" {"a": {"b": [1, 2.5e3, {"c": "x\"y"}]}, "n": null, "a2": "\u00e9"} "#;
        assert_eq!(
            get(doc, &[Step::Key("a")]),
            Some(r#"{"b": [1, 2.5e3, {"c": "x\"y"}]}"#)
        );
        let c = [
            Step::Key("a"),
            Step::Key("b"),
            Step::Index(-1),
            Step::Key("c"),
        ];
        assert_eq!(get(doc, &c), Some(r#""x\"y""#));
        assert_eq!(
            text_of(get(doc, &c).unwrap()).unwrap().as_deref(),
            Some("x\"y")
        );
        assert_eq!(
            get(doc, &[Step::Key("a"), Step::Key("b"), Step::Key("1")]),
            Some("2.5e3")
        );
        assert_eq!(
            get(doc, &[Step::Key("a"), Step::Key("b"), Step::Index(3)]),
            None
        );
        assert_eq!(get(doc, &[Step::Key("a"), Step::Index(0)]), None);
        assert_eq!(get("[5, 6]", &[Step::Key("1")]), Some("6"));
        assert_eq!(get("[5, 6]", &[Step::Member("1")]), None);
        assert_eq!(get(doc, &[Step::Key("n")]), Some("null"));
        assert_eq!(text_of("null").unwrap(), None);
        assert_eq!(
            text_of(get(doc, &[Step::Key("a2")]).unwrap())
                .unwrap()
                .as_deref(),
            Some("é")
        );
        // The last of a key given twice.
        assert_eq!(get(r#"{"k": 1, "k": 2}"#, &[Step::Key("k")]), Some("2"));
        assert_eq!(text_of(r#""\ud83d\ude00""#).unwrap().as_deref(), Some("😀"));
    }

    #[test]
    fn documents_are_checked_whole() {
        for bad in [
            "",
            "{",
            r#"{"a": 1,}"#,
            "[1 2]",
            "01",
            "1.",
            "-",
            "tru",
            r#""a"#,
            "{} x",
            r#"{"a" 1}"#,
            "\"\u{1}\"",
            r#""\x""#,
            "[1] [2]",
            "NaN",
        ] {
            assert!(checked(bad).is_err(), "{bad:?}");
        }
        for good in [
            "0",
            "-0.5E-3",
            " true ",
            "[]",
            "{}",
            r#"[{"a": []}, "", null]"#,
        ] {
            assert!(checked(good).is_ok(), "{good:?}");
        }
        let deep = "[".repeat(1_000_000) + &"]".repeat(1_000_000);
        assert!(checked(&deep).is_ok());
        let open = "[".repeat(1_000_000) + &"]".repeat(999_999);
        assert!(checked(&open).is_err());
        let deep_object = r#"{"a":"#.repeat(100_000) + "1" + &"}".repeat(100_000);
        assert_eq!(type_of(checked(&deep_object).unwrap()), "object");
    }

    #[test]
    fn types_and_lengths() {
        assert_eq!(type_of(checked(" {\"a\": 1}").unwrap()), "object");
        assert_eq!(type_of("-1"), "number");
        assert_eq!(type_of("false"), "boolean");
        assert_eq!(
            array_length(checked("[1, [2, 3], {}] ").unwrap()).unwrap(),
            3
        );
        assert_eq!(array_length("[]").unwrap(), 0);
        assert!(array_length("{}").is_err());
        assert!(array_length("1").is_err());
    }

    #[test]
    fn path_literals() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            array_literal("{a,0, \"b c\" ,null, \"NULL\"}").unwrap(),
            vec![some("a"), some("0"), some("b c"), None, some("NULL")]
        );
        assert_eq!(array_literal("{}").unwrap(), Vec::<Option<String>>::new());
        assert!(array_literal("a,b").is_err());
        assert!(array_literal("{a,{b}}").is_err());
    }
}
