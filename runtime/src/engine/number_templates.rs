//! PostgreSQL's numeric templates in `to_char(number, template)`.
//!
//! DataFusion 55's `to_char` takes dates, times and durations only: `to_char(1234.5,
//! '9,999.99')`, the usual way a PostgreSQL report writes an amount, failed to plan. [`write`]
//! formats a number as PostgreSQL 15 does (C locale):
//! - `9` a digit, blank when a leading zero; `0` a digit, zero-padded from the first `0`;
//!   `.`/`D` the decimal point; `,`/`G` a group separator, blank before the first digit;
//! - the sign: by default `-` (or a blank) right before the first digit; `S` anchored to the
//!   number (`+`/`-`), or at the end; `MI`, `PL`, `SG` at their place; `PR` `<…>` around a
//!   negative number;
//! - `FM` drops padding blanks and the trailing zeros of `9` places; `V` multiplies by ten per
//!   digit after it; `EEEE` writes a mantissa and exponent; `RN` a Roman numeral (1 to 3999);
//!   `TH`/`th` an ordinal suffix; `L` the C locale's currency symbol (a blank); text in double
//!   quotes and any other character is copied;
//! - a number with more integer digits than the template has places is written as `#`s.
//!
//! Decimals and integers are rounded half away from zero, exactly; a `DOUBLE` to 15 significant
//! digits (a `REAL` to 6), as PostgreSQL's `float8`/`float4` versions do.

use std::sync::Arc;

use arrow::array::{Array, AsArray, StringBuilder};
use arrow::datatypes::{
    DataType, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int64Type, UInt64Type,
};
use datafusion::common::types::logical_string;
use datafusion::common::{Result as DfResult, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    Coercion, ColumnarValue, Signature, TypeSignature, TypeSignatureClass,
};

/// `to_char`'s signatures, with a number and a text template added.
pub(super) fn with_numbers(dates: &Signature) -> Signature {
    let mut variants = match &dates.type_signature {
        TypeSignature::OneOf(variants) => variants.clone(),
        other => vec![other.clone()],
    };
    variants.push(TypeSignature::Coercible(vec![
        Coercion::new_exact(TypeSignatureClass::Numeric),
        Coercion::new_exact(TypeSignatureClass::Native(logical_string())),
    ]));
    Signature::one_of(variants, dates.volatility)
}

/// `to_char(number, template)` of every row: the template once when it is a constant.
pub(super) fn to_char(
    number: &ColumnarValue,
    template: &ColumnarValue,
    rows: usize,
) -> DfResult<ColumnarValue> {
    let scalar = matches!(
        (number, template),
        (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_))
    );
    let rows = if scalar { 1 } else { rows };
    let values = widened(number.to_array(rows)?)?;
    // A constant template is read once and never copied to every row; a template per row is
    // read again only where it changes.
    let constant = match template {
        ColumnarValue::Scalar(t) => Some(match t.try_as_str() {
            Some(Some(t)) => Some(NumberTemplate::parse(t)?),
            _ => None,
        }),
        ColumnarValue::Array(_) => None,
    };
    let per_row = match constant {
        Some(_) => None,
        None => Some(arrow::compute::cast(
            &template.to_array(rows)?,
            &DataType::Utf8,
        )?),
    };
    let per_row = per_row.as_ref().map(|t| t.as_string::<i32>());
    let mut parsed: Option<(String, NumberTemplate)> = None;
    let mut out = StringBuilder::with_capacity(rows, rows * 12);
    let (mut text, mut bytes) = (String::new(), 0_u128);
    for i in 0..rows {
        let template = match (&constant, per_row) {
            (Some(constant), _) => constant.as_ref(),
            (None, Some(texts)) if texts.is_valid(i) => {
                let wanted = texts.value(i);
                if parsed.as_ref().is_none_or(|(t, _)| t != wanted) {
                    parsed = Some((wanted.to_string(), NumberTemplate::parse(wanted)?));
                }
                parsed.as_ref().map(|(_, t)| t)
            }
            _ => None,
        };
        let Some(template) = template.filter(|_| values.is_valid(i)) else {
            out.append_null();
            continue;
        };
        let (digits, float) = digits_of(&values, i, template)?;
        text.clear();
        template.write(&digits, float, &mut text);
        bytes += text.len() as u128;
        super::bounded::within_generated_bound("to_char()", bytes)?;
        out.append_value(&text);
    }
    let texts = out.finish();
    Ok(match scalar {
        true => ColumnarValue::Scalar(ScalarValue::try_from_array(&texts, 0)?),
        false => ColumnarValue::Array(Arc::new(texts)),
    })
}

/// `values` in the one type of its kind [`digits_of`] reads (`BIGINT`, `BIGINT UNSIGNED`,
/// `REAL`, `Decimal128`), cast once for the batch rather than once a row.
fn widened(values: arrow::array::ArrayRef) -> DfResult<arrow::array::ArrayRef> {
    let to = match values.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::Int32 => DataType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => DataType::UInt64,
        DataType::Float16 => DataType::Float32,
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) => DataType::Decimal128(*p, *s),
        _ => return Ok(values),
    };
    Ok(arrow::compute::cast(&values, &to)?)
}

/// Row `i` of `values` as `template` rounds it, and as a float (for `EEEE`).
fn digits_of(values: &dyn Array, i: usize, template: &NumberTemplate) -> DfResult<(Digits, f64)> {
    let (shift, places) = (template.shift(), template.fraction_places());
    let exact = |negative: bool, magnitude: String, scale: i8| {
        // A negative scale counts tens: the digits are followed by that many zeros.
        let (magnitude, scale) = match usize::try_from(scale) {
            Ok(scale) => (magnitude, scale),
            Err(_) => (
                magnitude + &"0".repeat(usize::from(scale.unsigned_abs())),
                0,
            ),
        };
        Digits::exact(negative, &magnitude, scale, shift, places)
    };
    Ok(match values.data_type() {
        DataType::Float64 | DataType::Float32 => {
            let (v, significant) = match values.data_type() {
                DataType::Float64 => (values.as_primitive::<Float64Type>().value(i), 15),
                _ => (f64::from(values.as_primitive::<Float32Type>().value(i)), 6),
            };
            let digits = match v.is_finite() {
                true => Digits::float(v, significant, shift, places),
                false => Digits::overflowing(v < 0.0),
            };
            (digits, v)
        }
        DataType::Decimal128(_, scale) => {
            let v = values.as_primitive::<Decimal128Type>().value(i);
            let float = v as f64 / 10f64.powi(i32::from(*scale));
            (exact(v < 0, v.unsigned_abs().to_string(), *scale), float)
        }
        DataType::Decimal256(_, scale) => {
            let v = values.as_primitive::<Decimal256Type>().value(i).to_string();
            let negative = v.starts_with('-');
            let magnitude = v.trim_start_matches('-').to_string();
            let float = v.parse::<f64>().unwrap_or(f64::NAN) / 10f64.powi(i32::from(*scale));
            (exact(negative, magnitude, *scale), float)
        }
        DataType::UInt64 => {
            let v = values.as_primitive::<UInt64Type>().value(i);
            (exact(false, v.to_string(), 0), v as f64)
        }
        DataType::Int64 => {
            let v = values.as_primitive::<Int64Type>().value(i);
            (exact(v < 0, v.unsigned_abs().to_string(), 0), v as f64)
        }
        other => return exec_err!("to_char() cannot write a {other}"),
    })
}

/// A parsed numeric template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NumberTemplate {
    parts: Vec<Part>,
    fill: bool,
    /// Digit places before the decimal point (those after `V` included), and after it.
    before: usize,
    after: usize,
    /// Digit places after `V`: the number is multiplied by ten for each.
    shift: usize,
    /// The first integer place (counted from the left) from which leading zeros are written.
    first_zero: Option<usize>,
    /// The last fraction place that is `0`: `FM` keeps trailing zeros up to it.
    last_zero: Option<usize>,
    sign: Sign,
    scientific: bool,
    roman: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Digit,
    Point,
    Group,
    /// `S` after the digits.
    TrailingSign,
    Minus,
    Plus,
    PlusMinus,
    /// The closing `>` of `PR`.
    Bracket,
    Currency,
    Ordinal {
        upper: bool,
    },
    Text(String),
}

/// Where the sign goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    /// `-` (blank when positive) right before the first digit.
    Default,
    /// `S` before the digits: `+`/`-` right before the first digit.
    Anchored,
    /// `S` after the digits, `MI` or `SG`: only at its place.
    Placed,
    /// `<` right before the first digit and `>` at the end.
    Brackets,
}

/// A number's digits: sign, integer digits (no leading zeros, `""` for zero) and fraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digits {
    negative: bool,
    whole: String,
    fraction: String,
}

impl NumberTemplate {
    pub(super) fn parse(template: &str) -> DfResult<Self> {
        let mut t = NumberTemplate {
            parts: Vec::new(),
            fill: false,
            before: 0,
            after: 0,
            shift: 0,
            first_zero: None,
            last_zero: None,
            sign: Sign::Default,
            scientific: false,
            roman: None,
        };
        let (mut point, mut after_v, mut any_digit) = (false, false, false);
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            let upper2 = rest.get(..2).map(str::to_ascii_uppercase);
            let mut take = c.len_utf8();
            match (c, upper2.as_deref()) {
                (_, Some("FM")) => {
                    t.fill = true;
                    take = 2;
                }
                (_, Some("MI")) => {
                    t.parts.push(Part::Minus);
                    t.sign = Sign::Placed;
                    take = 2;
                }
                (_, Some("PL")) => {
                    t.parts.push(Part::Plus);
                    take = 2;
                }
                (_, Some("SG")) => {
                    t.parts.push(Part::PlusMinus);
                    t.sign = Sign::Placed;
                    take = 2;
                }
                (_, Some("PR")) => {
                    t.parts.push(Part::Bracket);
                    t.sign = Sign::Brackets;
                    take = 2;
                }
                (_, Some("RN")) => {
                    t.roman = Some(c == 'r');
                    take = 2;
                }
                (_, Some("TH")) => {
                    t.parts.push(Part::Ordinal { upper: c == 'T' });
                    take = 2;
                }
                (_, Some("EE"))
                    if rest
                        .get(..4)
                        .is_some_and(|e| e.eq_ignore_ascii_case("EEEE")) =>
                {
                    t.scientific = true;
                    take = 4;
                }
                ('9' | '0', _) => {
                    any_digit = true;
                    if point {
                        if c == '0' {
                            t.last_zero = Some(t.after);
                        }
                        t.after += 1;
                    } else {
                        if c == '0' && t.first_zero.is_none() {
                            t.first_zero = Some(t.before);
                        }
                        t.before += 1;
                        if after_v {
                            t.shift += 1;
                        }
                    }
                    t.parts.push(Part::Digit);
                }
                ('.' | 'D' | 'd', _) => {
                    if point {
                        return plan_err!("to_char() template has multiple decimal points");
                    }
                    if after_v {
                        return plan_err!(
                            "to_char() template cannot use \"V\" and a decimal point together"
                        );
                    }
                    point = true;
                    t.parts.push(Part::Point);
                }
                (',' | 'G' | 'g', _) => t.parts.push(Part::Group),
                ('S' | 's', _) => {
                    if any_digit {
                        t.parts.push(Part::TrailingSign);
                        t.sign = Sign::Placed;
                    } else {
                        t.sign = Sign::Anchored;
                    }
                }
                ('L' | 'l', _) => t.parts.push(Part::Currency),
                ('V' | 'v', _) => {
                    if point {
                        return plan_err!(
                            "to_char() template cannot use \"V\" and a decimal point together"
                        );
                    }
                    after_v = true;
                }
                ('"', _) => {
                    let quoted = &rest[1..];
                    let end = quoted.find('"').unwrap_or(quoted.len());
                    t.parts.push(Part::Text(quoted[..end].to_string()));
                    take = 1 + (end + 1).min(quoted.len());
                }
                (c, _) => t.parts.push(Part::Text(c.to_string())),
            }
            rest = &rest[take..];
        }
        let mixed = t
            .parts
            .iter()
            .any(|p| !matches!(p, Part::Digit | Part::Point));
        if t.scientific && (mixed || t.fill) {
            return plan_err!(
                "\"EEEE\" is incompatible with other formats in a to_char() template"
            );
        }
        Ok(t)
    }

    /// Fraction digits to round to (those of `V` count as integer digits).
    pub(super) fn fraction_places(&self) -> usize {
        self.after
    }

    /// Digit places after `V`.
    pub(super) fn shift(&self) -> usize {
        self.shift
    }

    /// `digits` written by the template. `float` is the value as a float, for `EEEE`.
    pub(super) fn write(&self, digits: &Digits, float: f64, out: &mut String) {
        if let Some(lower) = self.roman {
            return self.write_roman(digits, lower, out);
        }
        if self.scientific {
            return self.write_scientific(float, out);
        }
        let zero = digits.whole.is_empty() && digits.fraction.bytes().all(|b| b == b'0');
        let negative = digits.negative && !zero;
        // Zero with no fraction places is written as one `0`.
        let whole = match (digits.whole.is_empty(), self.after) {
            (true, 0) => "0",
            _ => digits.whole.as_str(),
        };
        let overflow = whole.len() > self.before;
        let anchor = match (self.sign, negative) {
            (Sign::Default, true) => "-",
            (Sign::Anchored, true) => "-",
            (Sign::Anchored, false) => "+",
            (Sign::Brackets, true) => "<",
            (Sign::Default | Sign::Brackets, false) if !self.fill => " ",
            _ => "",
        };
        let blank = if self.fill { "" } else { " " };
        let kept_fraction = if self.fill {
            let significant = digits.fraction.trim_end_matches('0').len();
            significant.max(self.last_zero.map_or(0, |z| z + 1))
        } else {
            digits.fraction.len()
        };
        let (mut started, mut place, mut fraction_place) = (false, 0, 0);
        let point_in_template = self.parts.contains(&Part::Point);
        let (mut wrote_digit, mut point_at) = (false, None);
        let start = |out: &mut String, started: &mut bool| {
            if !*started {
                out.push_str(anchor);
                *started = true;
            }
        };
        for part in &self.parts {
            match part {
                Part::Digit if point_at.is_none() => {
                    let from_right = self.before - place;
                    if overflow {
                        start(out, &mut started);
                        out.push('#');
                    } else if from_right <= whole.len() {
                        start(out, &mut started);
                        out.push(whole.as_bytes()[whole.len() - from_right] as char);
                        wrote_digit = true;
                    } else if self.first_zero.is_some_and(|z| place >= z) {
                        start(out, &mut started);
                        out.push('0');
                        wrote_digit = true;
                    } else {
                        out.push_str(blank);
                    }
                    place += 1;
                }
                Part::Digit => {
                    if overflow && fraction_place < digits.fraction.len() {
                        out.push('#');
                    } else if fraction_place < kept_fraction
                        && let Some(d) = digits.fraction.as_bytes().get(fraction_place)
                    {
                        out.push(*d as char);
                        wrote_digit = true;
                    }
                    fraction_place += 1;
                }
                // The point is left out when no fraction digit follows it (none in the template,
                // or a float's digits past its precision).
                Part::Point if digits.fraction.is_empty() && !overflow => {
                    point_at = Some(out.len());
                }
                Part::Point => {
                    start(out, &mut started);
                    point_at = Some(out.len());
                    out.push('.');
                }
                Part::Group if started => out.push(','),
                Part::Group => out.push_str(blank),
                Part::TrailingSign | Part::PlusMinus => out.push(if negative { '-' } else { '+' }),
                Part::Minus => out.push_str(if negative { "-" } else { blank }),
                Part::Plus => out.push_str(if negative { blank } else { "+" }),
                Part::Bracket => out.push_str(if negative { ">" } else { blank }),
                Part::Currency => out.push(' '),
                // PostgreSQL writes no suffix for a negative number, a fraction or an overflow.
                Part::Ordinal { .. } if negative || overflow || point_in_template => {}
                Part::Ordinal { upper } => {
                    let last_two = whole
                        .get(whole.len().saturating_sub(2)..)
                        .and_then(|d| d.parse::<i64>().ok())
                        .unwrap_or(0);
                    let suffix = super::templates::ordinal_suffix(last_two);
                    match upper {
                        true => out.push_str(&suffix.to_ascii_uppercase()),
                        false => out.push_str(suffix),
                    }
                }
                Part::Text(text) => out.push_str(text),
            }
        }
        // In fill mode a zero whose places all dropped is still written: `0.`.
        if self.fill && !wrote_digit && !overflow {
            match point_at {
                Some(at) => out.insert(at, '0'),
                None => out.push('0'),
            }
        }
    }

    fn write_roman(&self, digits: &Digits, lower: bool, out: &mut String) {
        let n = match (digits.negative, digits.whole.parse::<u32>()) {
            (false, Ok(n)) if (1..=3999).contains(&n) => n,
            _ => return out.push_str(&"#".repeat(15)),
        };
        const NUMERALS: [(u32, &str); 13] = [
            (1000, "M"),
            (900, "CM"),
            (500, "D"),
            (400, "CD"),
            (100, "C"),
            (90, "XC"),
            (50, "L"),
            (40, "XL"),
            (10, "X"),
            (9, "IX"),
            (5, "V"),
            (4, "IV"),
            (1, "I"),
        ];
        let (mut left, mut roman) = (n, String::new());
        for (value, numeral) in NUMERALS {
            while left >= value {
                roman.push_str(numeral);
                left -= value;
            }
        }
        if lower {
            roman.make_ascii_lowercase();
        }
        if !self.fill {
            out.push_str(&" ".repeat(15 - roman.len()));
        }
        out.push_str(&roman);
    }

    fn write_scientific(&self, value: f64, out: &mut String) {
        out.push(if value < 0.0 { '-' } else { ' ' });
        if !value.is_finite() {
            out.push_str(&"#".repeat(self.before + self.after + 5));
            return;
        }
        // Rust writes `1.23e4`; PostgreSQL `1.23e+04`.
        let written = format!("{:.*e}", self.after, value.abs());
        let (mantissa, exponent) = written.split_once('e').unwrap_or((&written, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        let sign = if exponent < 0 { '-' } else { '+' };
        out.push_str(mantissa);
        out.push('e');
        out.push(sign);
        out.push_str(&format!("{:02}", exponent.unsigned_abs()));
    }
}

impl Digits {
    /// The exact decimal `magnitude` (its digits) scaled by `scale`, shifted by `shift` places
    /// and rounded half away from zero to `places` fraction digits.
    pub(super) fn exact(
        negative: bool,
        magnitude: &str,
        scale: usize,
        shift: usize,
        places: usize,
    ) -> Digits {
        let padded = format!("{magnitude:0>width$}", width = scale + 1);
        let (whole, fraction) = padded.split_at(padded.len() - scale);
        let mut fraction = fraction.to_string();
        let mut whole = whole.to_string();
        // `V`: move `shift` digits from the fraction to the integer part.
        while fraction.len() < shift {
            fraction.push('0');
        }
        whole.push_str(&fraction[..shift]);
        fraction.drain(..shift);
        if fraction.len() > places {
            let up = fraction.as_bytes()[places] >= b'5';
            fraction.truncate(places);
            if up {
                let mut all = format!("{whole}{fraction}").into_bytes();
                let mut i = all.len();
                loop {
                    if i == 0 {
                        all.insert(0, b'1');
                        break;
                    }
                    i -= 1;
                    if all[i] == b'9' {
                        all[i] = b'0';
                    } else {
                        all[i] += 1;
                        break;
                    }
                }
                let all = String::from_utf8(all).unwrap_or_default();
                let cut = all.len() - places;
                whole = all[..cut].to_string();
                fraction = all[cut..].to_string();
            }
        }
        while fraction.len() < places {
            fraction.push('0');
        }
        Digits {
            negative,
            whole: whole.trim_start_matches('0').to_string(),
            fraction,
        }
    }

    /// A float, as PostgreSQL's float versions write it: `significant` digits at most (15 for
    /// a `DOUBLE`, 6 for a `REAL`), so fraction places past them are left out.
    pub(super) fn float(value: f64, significant: usize, shift: usize, places: usize) -> Digits {
        let value = value * 10f64.powi(shift as i32);
        let whole_len = format!("{:.0}", value.abs()).len();
        let places = places.min(significant.saturating_sub(whole_len));
        let written = format!("{:.*}", places, value.abs());
        let (whole, fraction) = written.split_once('.').unwrap_or((&written, ""));
        Digits {
            negative: value.is_sign_negative() && value != 0.0,
            whole: whole.trim_start_matches('0').to_string(),
            fraction: fraction.to_string(),
        }
    }

    /// Digits that overflow every template (an infinite or NaN float).
    pub(super) fn overflowing(negative: bool) -> Digits {
        Digits {
            negative,
            whole: "9".repeat(400),
            fraction: "9".repeat(400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(v: &str, template: &str) -> String {
        let t = NumberTemplate::parse(template).unwrap();
        let negative = v.starts_with('-');
        let v = v.trim_start_matches('-');
        let (w, f) = v.split_once('.').unwrap_or((v, ""));
        let digits = Digits::exact(
            negative,
            &format!("{w}{f}"),
            f.len(),
            t.shift(),
            t.fraction_places(),
        );
        let mut out = String::new();
        t.write(
            &digits,
            v.parse::<f64>().unwrap() * if negative { -1.0 } else { 1.0 },
            &mut out,
        );
        out
    }

    fn double(v: f64, template: &str) -> String {
        let t = NumberTemplate::parse(template).unwrap();
        let digits = Digits::float(v, 15, t.shift(), t.fraction_places());
        let mut out = String::new();
        t.write(&digits, v, &mut out);
        out
    }

    /// Each answer is PostgreSQL 15's (`lc_numeric` C) for `to_char(<numeric>, template)`.
    #[test]
    fn numbers_are_written_as_postgresql_writes_them() {
        let cases = [
            ("1234.5", "9,999.99", " 1,234.50"),
            ("-1234.5", "9,999.99", "-1,234.50"),
            ("5", "999", "   5"),
            ("1234.5", "FM9,999.99", "1,234.5"),
            ("0.5", "9.99", "  .50"),
            ("0.5", "0.99", " 0.50"),
            ("12345", "999", " ###"),
            ("-0.1", "99.99", "  -.10"),
            ("-0.1", "FM90.99", "-0.1"),
            ("0", "99.99", "   .00"),
            ("0", "FM99.99", "0."),
            ("0", "FM90.99", "0."),
            ("485", "9 9 9", " 4 8 5"),
            ("1485", "9,999", " 1,485"),
            ("148.5", "999.999", " 148.500"),
            ("148.5", "FM999.999", "148.5"),
            ("148.5", "FM999.990", "148.500"),
            ("-485", "999S", "485-"),
            ("-485", "S999", "-485"),
            ("485", "S999", "+485"),
            ("-485", "999MI", "485-"),
            ("485", "999MI", "485 "),
            ("-485", "999PR", "<485>"),
            ("485", "999PR", " 485 "),
            ("485", "PL999", "+ 485"),
            ("-485", "SG999", "-485"),
            ("485", "L999", "  485"),
            ("12", "99V9", " 120"),
            ("0.0004859", "9.99EEEE", " 4.86e-04"),
            ("485", "RN", "        CDLXXXV"),
            ("485", "FMRN", "CDLXXXV"),
            ("482", "999th", " 482nd"),
            ("1234567.891", "999G999G999D99", "   1,234,567.89"),
            ("2.5", "9", " 3"),
            ("-2.5", "9", "-3"),
            ("100", "FM999", "100"),
            ("100", "\"Total: \"999", "Total:  100"),
            ("-5", "FM999", "-5"),
            ("-5", "000", "-005"),
            ("5", "FM000", "005"),
            ("1234.5", "99", " ##"),
            ("1234.5", "99.9", " ##.#"),
            ("12.345", "99.", " 12"),
            ("0", "FM99.", "0"),
            ("-1", "FM9th", "-1"),
            ("12", "FM9th", "#"),
            ("12.0", "99.9th", " 12.0"),
            ("12", "99.99", " 12.00"),
            ("12", "FM99.99", "12."),
            ("12", "FM99.00", "12.00"),
            ("0.5", "FM9.99", ".5"),
            ("1234", "FM9G999", "1,234"),
            ("-1234.567", "FM9,999.00", "-1,234.57"),
            ("12", "x99", "x 12"),
            ("1234", "999,999", "   1,234"),
            ("0.001", "0.99", " 0.00"),
            ("0.005", "0.99", " 0.01"),
            ("-0.005", "0.99", "-0.01"),
            ("9.999", "9.99", " #.##"),
            ("99.999", "99.99", " ##.##"),
            ("-12", "S9999", "  -12"),
            ("-12", "FMS9999", "-12"),
            ("12", "9999S", "  12+"),
            ("-12.5", "99.9PR", "<12.5>"),
            ("12", "0099", " 0012"),
            ("12", "9099", "  012"),
            ("-12", "MI9999", "-  12"),
            ("-12", "FMMI9999", "-12"),
            ("0", "999", "   0"),
            ("0", "FM999", "0"),
            ("0", "9", " 0"),
            ("0.5", "999", "   1"),
            ("5", "9,999", "     5"),
            ("5", "FM9,999", "5"),
            ("485", "FM999MI", "485"),
            ("5", "999PR", "   5 "),
            ("-5", "FM999PR", "<5>"),
            ("5", "FM999PR", "5"),
            ("-5", "PL999", "   -5"),
            ("5", "FMPL999", "+5"),
            ("1", "9th", " 1st"),
            ("12", "FM99TH", "12TH"),
            ("13.5", "99th", " 14th"),
            ("0", "RN", "###############"),
            ("4000", "RN", "###############"),
            ("12345.678", "9.99EEEE", " 1.23e+04"),
            ("0", "9.99EEEE", " 0.00e+00"),
            ("12.5", "99V99", " 1250"),
            ("-0.001", "0.99", " 0.00"),
            ("1.5", "FM0.00", "1.50"),
            ("123", "\"No.\" 999", "No.  123"),
            ("123", "FM\"abc\"999", "abc123"),
            ("1234567", "9G999G999", " 1,234,567"),
            (
                "123456789012345678",
                "999999999999999999",
                " 123456789012345678",
            ),
            ("5.5", "9 . 9", " 5 . 5"),
            ("99.5", "99", " ##"),
            ("-99.5", "FM99", "-##"),
            ("1234", "9999EEEE", " 1e+03"),
            ("1.5", "0.0EEEE", " 1.5e+00"),
            ("5", "FM9SG", "5+"),
            ("5", "SG9", "+5"),
        ];
        for (value, template, postgres) in cases {
            assert_eq!(
                exact(value, template),
                postgres,
                "to_char({value}, '{template}')"
            );
        }
    }

    /// PostgreSQL's `float8` answers: 15 significant digits, ties as the C library rounds them.
    #[test]
    fn doubles_keep_fifteen_significant_digits() {
        assert_eq!(double(2.5, "9"), " 2");
        assert_eq!(double(3.5, "9"), " 4");
        assert_eq!(double(2.675, "9.99"), " 2.67");
        assert_eq!(double(0.1, "0.99999999999999999999"), " 0.10000000000000");
        assert_eq!(double(1e20, "999"), " ###");
        assert_eq!(double(1e20, "9.99"), " #.");
        assert_eq!(double(1e15, "9999999999999999.99"), " 1000000000000000");
        assert_eq!(double(1234.5, "FM9,999.00"), "1,234.50");
    }

    #[test]
    fn templates_postgresql_refuses_are_refused() {
        assert!(NumberTemplate::parse("9.9.9").is_err());
        assert!(NumberTemplate::parse("99V9.9").is_err());
        assert!(NumberTemplate::parse("FM9.99EEEE").is_err());
    }
}
