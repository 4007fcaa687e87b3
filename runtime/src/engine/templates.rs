//! PostgreSQL's date and time templates in `to_char`, `to_timestamp` and `to_date`.
//!
//! DataFusion's `to_char(ts, format)` and the formats of its parsing functions are chrono's
//! strftime specifiers (`%Y-%m-%d`). A PostgreSQL user writes `to_char(ts, 'YYYY-MM-DD')`, which
//! chrono reads as plain text: DataFusion answered the template itself, `YYYY-MM-DD`, for every
//! row and without an error, and `to_timestamp('05/03/2024', 'DD/MM/YYYY')` failed ("input
//! contains invalid characters").
//!
//! A format without a `%` is a PostgreSQL template here. [`PgToChar`] formats it field by field
//! as PostgreSQL's `to_char` does: numbers zero-padded (`FM` drops the padding), month and day
//! names in the keyword's case and blank-padded to 9, `TH`/`th` ordinals, text in double quotes
//! copied, `TZ` the zone's abbreviation. [`PgFormats`] wraps the parsing functions
//! (`to_timestamp*`, `to_date`, `to_time`, `to_unixtime`): a template is translated into the
//! chrono format that reads the same fields, and a field chrono cannot read (`J`, `Q`, `CC`,
//! `RM`, …) is refused by name. A format with a `%` is chrono's, as before: in a PostgreSQL
//! template `%` is plain text, which no one writes.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use arrow::array::temporal_conversions as tc;
use arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use arrow::datatypes::{DataType, FieldRef, TimeUnit};
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Timelike};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};

/// Whether `format` is a PostgreSQL template rather than a chrono format.
fn is_template(format: &str) -> bool {
    !format.contains('%')
}

/// How a name is written: `MONTH`, `Month` or `month`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Upper,
    Capital,
    Lower,
}

impl Case {
    fn apply(self, name: &str, out: &mut String) {
        match self {
            Case::Upper => out.extend(name.chars().flat_map(char::to_uppercase)),
            Case::Capital => out.push_str(name),
            Case::Lower => out.extend(name.chars().flat_map(char::to_lowercase)),
        }
    }
}

/// A template field, as PostgreSQL's table of template patterns names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `HH`, `HH12`: hour of day, 01–12.
    Hour12,
    /// `HH24`.
    Hour24,
    /// `MI`.
    Minute,
    /// `SS`.
    Second,
    /// `MS`: milliseconds, 000–999.
    Millis,
    /// `US`: microseconds, 000000–999999.
    Micros,
    /// `FF1` … `FF6`: the first n digits of the fraction.
    Fraction(u8),
    /// `SSSS`, `SSSSS`: seconds past midnight.
    SecondsOfDay,
    /// `AM`, `PM`, `A.M.`, `p.m.` …: the half of the day, in the keyword's case.
    Meridiem { dots: bool, upper: bool },
    /// `AD`, `BC`, `A.D.`, `b.c.` …: the era.
    Era { dots: bool, upper: bool },
    /// `Y,YYY`.
    YearComma,
    /// `YYYY`, `YYY`, `YY`, `Y`: the year's last n digits (all of them for 4).
    Year(u8),
    /// `IYYY`, `IYY`, `IY`, `I`: the ISO 8601 week-numbering year.
    IsoYear(u8),
    /// `MONTH`, `Month`, `month`: blank-padded to 9.
    MonthName(Case),
    /// `MON`, `Mon`, `mon`.
    MonthAbbrev(Case),
    /// `MM`.
    Month,
    /// `DAY`, `Day`, `day`: blank-padded to 9.
    DayName(Case),
    /// `DY`, `Dy`, `dy`.
    DayAbbrev(Case),
    /// `DDD`: day of the year, 001–366.
    DayOfYear,
    /// `IDDD`: day of the ISO 8601 week-numbering year, 001–371.
    IsoDayOfYear,
    /// `DD`.
    DayOfMonth,
    /// `D`: day of the week, Sunday 1 to Saturday 7.
    DayOfWeek,
    /// `ID`: ISO 8601 day of the week, Monday 1 to Sunday 7.
    IsoDayOfWeek,
    /// `W`: week of the month, 1–5 (the first week starts on the first day).
    WeekOfMonth,
    /// `WW`: week of the year, 1–53 (the first week starts on the first day).
    WeekOfYear,
    /// `IW`: ISO 8601 week of the year.
    IsoWeek,
    /// `CC`: century.
    Century,
    /// `J`: Julian day.
    Julian,
    /// `Q`: quarter.
    Quarter,
    /// `RM`, `rm`: the month in Roman numerals, blank-padded to 4.
    RomanMonth(Case),
    /// `TZ`, `tz`: the zone's abbreviation (empty for a timestamp without a zone).
    ZoneName(Case),
    /// `TZH`: the offset's sign and hours.
    ZoneHours,
    /// `TZM`: the offset's minutes.
    ZoneMinutes,
    /// `OF`: the offset, `+05` or `+05:30`.
    Offset,
    /// `FX`: fixed format (for parsing in PostgreSQL); writes nothing.
    Fixed,
}

/// The template keywords, each with the field it names (PostgreSQL's `DCH_keywords`).
const KEYWORDS: &[(&str, Field)] = &[
    (
        "A.D.",
        Field::Era {
            dots: true,
            upper: true,
        },
    ),
    (
        "A.M.",
        Field::Meridiem {
            dots: true,
            upper: true,
        },
    ),
    (
        "AD",
        Field::Era {
            dots: false,
            upper: true,
        },
    ),
    (
        "AM",
        Field::Meridiem {
            dots: false,
            upper: true,
        },
    ),
    (
        "B.C.",
        Field::Era {
            dots: true,
            upper: true,
        },
    ),
    (
        "BC",
        Field::Era {
            dots: false,
            upper: true,
        },
    ),
    ("CC", Field::Century),
    ("DAY", Field::DayName(Case::Upper)),
    ("DDD", Field::DayOfYear),
    ("DD", Field::DayOfMonth),
    ("DY", Field::DayAbbrev(Case::Upper)),
    ("Day", Field::DayName(Case::Capital)),
    ("Dy", Field::DayAbbrev(Case::Capital)),
    ("D", Field::DayOfWeek),
    ("FF1", Field::Fraction(1)),
    ("FF2", Field::Fraction(2)),
    ("FF3", Field::Fraction(3)),
    ("FF4", Field::Fraction(4)),
    ("FF5", Field::Fraction(5)),
    ("FF6", Field::Fraction(6)),
    ("FX", Field::Fixed),
    ("HH24", Field::Hour24),
    ("HH12", Field::Hour12),
    ("HH", Field::Hour12),
    ("IDDD", Field::IsoDayOfYear),
    ("ID", Field::IsoDayOfWeek),
    ("IW", Field::IsoWeek),
    ("IYYY", Field::IsoYear(4)),
    ("IYY", Field::IsoYear(3)),
    ("IY", Field::IsoYear(2)),
    ("I", Field::IsoYear(1)),
    ("J", Field::Julian),
    ("MI", Field::Minute),
    ("MM", Field::Month),
    ("MONTH", Field::MonthName(Case::Upper)),
    ("MON", Field::MonthAbbrev(Case::Upper)),
    ("MS", Field::Millis),
    ("Month", Field::MonthName(Case::Capital)),
    ("Mon", Field::MonthAbbrev(Case::Capital)),
    ("OF", Field::Offset),
    (
        "P.M.",
        Field::Meridiem {
            dots: true,
            upper: true,
        },
    ),
    (
        "PM",
        Field::Meridiem {
            dots: false,
            upper: true,
        },
    ),
    ("Q", Field::Quarter),
    ("RM", Field::RomanMonth(Case::Upper)),
    ("SSSSS", Field::SecondsOfDay),
    ("SSSS", Field::SecondsOfDay),
    ("SS", Field::Second),
    ("TZH", Field::ZoneHours),
    ("TZM", Field::ZoneMinutes),
    ("TZ", Field::ZoneName(Case::Upper)),
    ("US", Field::Micros),
    ("WW", Field::WeekOfYear),
    ("W", Field::WeekOfMonth),
    ("Y,YYY", Field::YearComma),
    ("YYYY", Field::Year(4)),
    ("YYY", Field::Year(3)),
    ("YY", Field::Year(2)),
    ("Y", Field::Year(1)),
    (
        "a.d.",
        Field::Era {
            dots: true,
            upper: false,
        },
    ),
    (
        "a.m.",
        Field::Meridiem {
            dots: true,
            upper: false,
        },
    ),
    (
        "ad",
        Field::Era {
            dots: false,
            upper: false,
        },
    ),
    (
        "am",
        Field::Meridiem {
            dots: false,
            upper: false,
        },
    ),
    (
        "b.c.",
        Field::Era {
            dots: true,
            upper: false,
        },
    ),
    (
        "bc",
        Field::Era {
            dots: false,
            upper: false,
        },
    ),
    ("cc", Field::Century),
    ("day", Field::DayName(Case::Lower)),
    ("ddd", Field::DayOfYear),
    ("dd", Field::DayOfMonth),
    ("dy", Field::DayAbbrev(Case::Lower)),
    ("d", Field::DayOfWeek),
    ("ff1", Field::Fraction(1)),
    ("ff2", Field::Fraction(2)),
    ("ff3", Field::Fraction(3)),
    ("ff4", Field::Fraction(4)),
    ("ff5", Field::Fraction(5)),
    ("ff6", Field::Fraction(6)),
    ("fx", Field::Fixed),
    ("hh24", Field::Hour24),
    ("hh12", Field::Hour12),
    ("hh", Field::Hour12),
    ("iddd", Field::IsoDayOfYear),
    ("id", Field::IsoDayOfWeek),
    ("iw", Field::IsoWeek),
    ("iyyy", Field::IsoYear(4)),
    ("iyy", Field::IsoYear(3)),
    ("iy", Field::IsoYear(2)),
    ("i", Field::IsoYear(1)),
    ("j", Field::Julian),
    ("mi", Field::Minute),
    ("mm", Field::Month),
    ("month", Field::MonthName(Case::Lower)),
    ("mon", Field::MonthAbbrev(Case::Lower)),
    ("ms", Field::Millis),
    ("of", Field::Offset),
    (
        "p.m.",
        Field::Meridiem {
            dots: true,
            upper: false,
        },
    ),
    (
        "pm",
        Field::Meridiem {
            dots: false,
            upper: false,
        },
    ),
    ("q", Field::Quarter),
    ("rm", Field::RomanMonth(Case::Lower)),
    ("sssss", Field::SecondsOfDay),
    ("ssss", Field::SecondsOfDay),
    ("ss", Field::Second),
    ("tzh", Field::ZoneHours),
    ("tzm", Field::ZoneMinutes),
    ("tz", Field::ZoneName(Case::Lower)),
    ("us", Field::Micros),
    ("ww", Field::WeekOfYear),
    ("w", Field::WeekOfMonth),
    ("y,yyy", Field::YearComma),
    ("yyyy", Field::Year(4)),
    ("yyy", Field::Year(3)),
    ("yy", Field::Year(2)),
    ("y", Field::Year(1)),
];

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text copied as it is.
    Text(String),
    Field {
        /// The keyword as written, for messages.
        key: &'static str,
        field: Field,
        /// `FM`: no padding.
        fill: bool,
        /// `TH` (upper case) or `th`: the number's ordinal suffix.
        ordinal: Option<Case>,
    },
}

/// A parsed PostgreSQL template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    parts: Vec<Part>,
}

/// The longest keyword `s` starts with.
fn keyword(s: &str) -> Option<(&'static str, Field)> {
    KEYWORDS
        .iter()
        .filter(|(k, _)| s.starts_with(k))
        .max_by_key(|(k, _)| k.len())
        .copied()
}

impl Template {
    /// Reads `template` as PostgreSQL does: at each position a keyword (the longest that
    /// matches), with `FM`/`TM` before it and `TH`/`th` after; else quoted or plain text.
    fn parse(template: &str) -> Self {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            let (fill, after_prefix) = prefixes(rest);
            if let Some((key, field)) = keyword(after_prefix) {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                rest = &after_prefix[key.len()..];
                let ordinal = if rest.starts_with("TH") {
                    Some(Case::Upper)
                } else if rest.starts_with("th") {
                    Some(Case::Lower)
                } else {
                    None
                };
                if ordinal.is_some() {
                    rest = &rest[2..];
                }
                parts.push(Part::Field {
                    key,
                    field,
                    fill,
                    ordinal,
                });
                continue;
            }
            rest = &rest[c.len_utf8()..];
            match c {
                // Quoted text, in which a backslash takes the next character as it is.
                '"' => {
                    let mut chars = rest.char_indices();
                    let mut end = rest.len();
                    while let Some((i, q)) = chars.next() {
                        match q {
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            '\\' => match chars.next() {
                                Some((_, escaped)) => text.push(escaped),
                                None => text.push('\\'),
                            },
                            q => text.push(q),
                        }
                    }
                    rest = &rest[end..];
                }
                '\\' if rest.starts_with('"') => {
                    text.push('"');
                    rest = &rest[1..];
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Template { parts }
    }

    /// The chrono format that reads what this template writes, or the field it cannot read.
    fn chrono_format(&self, function: &str) -> DfResult<String> {
        let has = |wanted: fn(&Field) -> bool| {
            self.parts
                .iter()
                .any(|p| matches!(p, Part::Field { field, .. } if wanted(field)))
        };
        // Chrono reads an hour only with its minutes, and a 12-hour clock only with AM/PM;
        // without them it read the date alone, at midnight.
        let meridiem = has(|f| matches!(f, Field::Meridiem { .. }));
        if has(|f| matches!(f, Field::Hour12 | Field::Hour24)) && !has(|f| *f == Field::Minute) {
            return exec_err!("{function}() reads an hour only with its minutes (MI)");
        }
        let mut out = String::new();
        for part in &self.parts {
            let (key, field, ordinal) = match part {
                Part::Text(t) => {
                    out.push_str(&t.replace('%', "%%"));
                    continue;
                }
                Part::Field {
                    key,
                    field,
                    ordinal,
                    ..
                } => (key, field, ordinal),
            };
            let spec = match field {
                _ if ordinal.is_some() => None,
                Field::Hour12 if meridiem => Some("%I"),
                Field::Hour12 => Some("%H"),
                Field::Hour24 => Some("%H"),
                Field::Minute => Some("%M"),
                Field::Second => Some("%S"),
                Field::Millis | Field::Fraction(3) => Some("%3f"),
                Field::Micros | Field::Fraction(6) => Some("%6f"),
                Field::Meridiem { dots: false, .. } => Some("%p"),
                Field::Year(4) => Some("%Y"),
                Field::Year(2) => Some("%y"),
                Field::IsoYear(4) => Some("%G"),
                Field::IsoYear(2) => Some("%g"),
                Field::MonthName(_) => Some("%B"),
                Field::MonthAbbrev(_) => Some("%b"),
                Field::Month => Some("%m"),
                Field::DayName(_) => Some("%A"),
                Field::DayAbbrev(_) => Some("%a"),
                Field::DayOfYear => Some("%j"),
                Field::DayOfMonth => Some("%d"),
                Field::IsoDayOfWeek => Some("%u"),
                Field::IsoWeek => Some("%V"),
                Field::ZoneName(_) => Some("%Z"),
                Field::Offset => Some("%#z"),
                Field::Fixed => Some(""),
                _ => None,
            };
            match spec {
                Some(spec) => out.push_str(spec),
                None => {
                    let key = match ordinal {
                        Some(Case::Lower) => format!("{key}th"),
                        Some(_) => format!("{key}TH"),
                        None => key.to_string(),
                    };
                    return exec_err!(
                        "{function}() cannot read the template field {key}; it reads YYYY, YY, \
                         IYYY, IY, MM, MON, MONTH, DD, DDD, DY, DAY, ID, IW, HH, HH12, HH24, MI, \
                         SS, MS, US, FF3, FF6, AM/PM, TZ and OF (or a chrono format such as \
                         '%Y-%m-%d')"
                    );
                }
            }
        }
        Ok(out)
    }

    /// Writes `at` as the template asks, into `out`.
    fn format(&self, at: &Moment, out: &mut String) -> DfResult<()> {
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field {
                    key,
                    field,
                    fill,
                    ordinal,
                } => {
                    let Some(date) = at.date.or_else(|| needs_no_date(*field).then_some(EPOCH))
                    else {
                        return exec_err!("to_char() of a time has no date field such as {key}");
                    };
                    write_field(*field, *fill, *ordinal, date, at, out);
                }
            }
        }
        Ok(())
    }
}

/// A day that stands in for the date of a time (its date fields are refused).
const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");

/// Whether `field` is one of the time of day (or the zone's), which a `TIME` has.
fn needs_no_date(field: Field) -> bool {
    matches!(
        field,
        Field::Hour12
            | Field::Hour24
            | Field::Minute
            | Field::Second
            | Field::Millis
            | Field::Micros
            | Field::Fraction(_)
            | Field::SecondsOfDay
            | Field::Meridiem { .. }
            | Field::ZoneName(_)
            | Field::ZoneHours
            | Field::ZoneMinutes
            | Field::Offset
            | Field::Fixed
    )
}

/// `FM` and `TM` before a keyword (in either case): whether `FM` was among them, and the text
/// after them.
fn prefixes(s: &str) -> (bool, &str) {
    let mut fill = false;
    let mut rest = s;
    // At most two (`FMTM`), so that a long run of them is not read again at every position.
    for _ in 0..2 {
        if rest.starts_with("FM") || rest.starts_with("fm") {
            fill = true;
        } else if !(rest.starts_with("TM") || rest.starts_with("tm")) {
            break;
        }
        rest = &rest[2..];
    }
    (fill, rest)
}

/// A value to format: its local date (none for a `TIME`) and time, and its zone if it has one.
struct Moment {
    date: Option<NaiveDate>,
    time: NaiveTime,
    /// Seconds east of UTC.
    offset: i32,
    /// The zone's abbreviation, if the value has a zone.
    zone: Option<String>,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const ROMAN: [&str; 12] = [
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII",
];

/// A year as PostgreSQL writes it: 1 BC is 1, not chrono's 0.
fn written_year(year: i32) -> i64 {
    match year <= 0 {
        true => 1 - i64::from(year),
        false => i64::from(year),
    }
}

/// The English ordinal suffix of `n`.
pub(super) fn ordinal_suffix(n: i64) -> &'static str {
    match (n % 100, n % 10) {
        (11..=13, _) => "th",
        (_, 1) => "st",
        (_, 2) => "nd",
        (_, 3) => "rd",
        _ => "th",
    }
}

fn write_field(
    field: Field,
    fill: bool,
    ordinal: Option<Case>,
    date: NaiveDate,
    at: &Moment,
    out: &mut String,
) {
    let time = at.time;
    let micros = i64::from(time.nanosecond() / 1000);
    let number = |value: i64, width: usize, out: &mut String| {
        let _ = match fill {
            true => write!(out, "{value}"),
            false => write!(out, "{value:0width$}"),
        };
        if let Some(case) = ordinal {
            case.apply(ordinal_suffix(value.abs()), out);
        }
    };
    let name = |name: &str, case: Case, width: usize, out: &mut String| {
        let start = out.len();
        case.apply(name, out);
        if !fill {
            let written = out[start..].chars().count();
            out.extend(std::iter::repeat_n(' ', width.saturating_sub(written)));
        }
    };
    let offset = at.offset;
    let sign = if offset < 0 { '-' } else { '+' };
    let (hours, minutes) = (offset.abs() / 3600, offset.abs() / 60 % 60);
    let pm = time.hour() >= 12;
    let iso = date.iso_week();
    match field {
        Field::Hour12 => number(i64::from(time.hour12().1), 2, out),
        Field::Hour24 => number(i64::from(time.hour()), 2, out),
        Field::Minute => number(i64::from(time.minute()), 2, out),
        Field::Second => number(i64::from(time.second()), 2, out),
        Field::Millis => number(micros / 1000, 3, out),
        Field::Micros => number(micros, 6, out),
        Field::Fraction(n) => number(micros / 10_i64.pow(6 - u32::from(n)), usize::from(n), out),
        Field::SecondsOfDay => number(i64::from(time.num_seconds_from_midnight()), 0, out),
        Field::Meridiem { dots, upper } => {
            let text = match (pm, dots) {
                (false, false) => "AM",
                (true, false) => "PM",
                (false, true) => "A.M.",
                (true, true) => "P.M.",
            };
            let case = if upper { Case::Upper } else { Case::Lower };
            case.apply(text, out);
        }
        Field::Era { dots, upper } => {
            let text = match (date.year() <= 0, dots) {
                (false, false) => "AD",
                (true, false) => "BC",
                (false, true) => "A.D.",
                (true, true) => "B.C.",
            };
            let case = if upper { Case::Upper } else { Case::Lower };
            case.apply(text, out);
        }
        Field::YearComma => {
            let y = written_year(date.year());
            let _ = write!(out, "{},{:03}", y / 1000, y % 1000);
        }
        Field::Year(n) | Field::IsoYear(n) => {
            let year = match field {
                Field::Year(_) => date.year(),
                _ => iso.year(),
            };
            let y = written_year(year);
            match n {
                4 => number(y, 4, out),
                n => number(y % 10_i64.pow(u32::from(n)), usize::from(n), out),
            }
        }
        Field::MonthName(case) => name(MONTHS[date.month0() as usize], case, 9, out),
        Field::MonthAbbrev(case) => name(&MONTHS[date.month0() as usize][..3], case, 3, out),
        Field::Month => number(i64::from(date.month()), 2, out),
        Field::DayName(case) => {
            let day = date.weekday().num_days_from_sunday() as usize;
            name(DAYS[day], case, 9, out)
        }
        Field::DayAbbrev(case) => {
            let day = date.weekday().num_days_from_sunday() as usize;
            name(&DAYS[day][..3], case, 3, out)
        }
        Field::DayOfYear => number(i64::from(date.ordinal()), 3, out),
        Field::IsoDayOfYear => {
            let day = (iso.week() - 1) * 7 + date.weekday().number_from_monday();
            number(i64::from(day), 3, out)
        }
        Field::DayOfMonth => number(i64::from(date.day()), 2, out),
        Field::DayOfWeek => number(i64::from(date.weekday().num_days_from_sunday() + 1), 1, out),
        Field::IsoDayOfWeek => number(i64::from(date.weekday().number_from_monday()), 1, out),
        Field::WeekOfMonth => number(i64::from((date.day() - 1) / 7 + 1), 1, out),
        Field::WeekOfYear => number(i64::from((date.ordinal() - 1) / 7 + 1), 2, out),
        Field::IsoWeek => number(i64::from(iso.week()), 2, out),
        Field::Century => {
            let y = i64::from(date.year());
            let century = match y > 0 {
                true => (y + 99) / 100,
                false => -((99 - (y - 1)) / 100),
            };
            number(century, 2, out)
        }
        Field::Julian => number(i64::from(date.num_days_from_ce()) + 1_721_425, 0, out),
        Field::Quarter => number(i64::from(date.month0() / 3 + 1), 1, out),
        Field::RomanMonth(case) => name(ROMAN[date.month0() as usize], case, 4, out),
        Field::ZoneName(case) => {
            if let Some(zone) = &at.zone {
                case.apply(zone, out);
            }
        }
        Field::ZoneHours => {
            out.push(sign);
            number(i64::from(hours), 2, out);
        }
        Field::ZoneMinutes => number(i64::from(minutes), 2, out),
        Field::Offset => {
            out.push(sign);
            number(i64::from(hours), 2, out);
            if minutes != 0 {
                let _ = write!(out, ":{minutes:02}");
            }
        }
        Field::Fixed => {}
    }
}

/// Reads the value at `i` of `array` (a date, time or timestamp), or `None` when it is NULL or
/// out of chrono's range.
struct Values<'a> {
    array: &'a dyn Array,
    /// The timestamps' zone, if they have one.
    zone: Option<(arrow::array::timezone::Tz, Option<chrono_tz::Tz>)>,
}

impl<'a> Values<'a> {
    fn new(array: &'a dyn Array) -> DfResult<Self> {
        let zone = match array.data_type() {
            DataType::Timestamp(_, Some(zone)) => {
                let tz: arrow::array::timezone::Tz = zone.parse()?;
                Some((tz, zone.parse::<chrono_tz::Tz>().ok()))
            }
            _ => None,
        };
        Ok(Values { array, zone })
    }

    fn at(&self, i: usize) -> Option<Moment> {
        use arrow::datatypes::{
            Date32Type, Date64Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
            Time64NanosecondType, TimestampMicrosecondType, TimestampMillisecondType,
            TimestampNanosecondType, TimestampSecondType,
        };
        if self.array.is_null(i) {
            return None;
        }
        let a = self.array;
        let plain = |at: NaiveDateTime| Moment {
            date: Some(at.date()),
            time: at.time(),
            offset: 0,
            zone: None,
        };
        let time = |time: NaiveTime| Moment {
            date: None,
            time,
            offset: 0,
            zone: None,
        };
        let utc = match a.data_type() {
            DataType::Date32 => {
                return tc::date32_to_datetime(a.as_primitive::<Date32Type>().value(i)).map(plain);
            }
            DataType::Date64 => {
                return tc::date64_to_datetime(a.as_primitive::<Date64Type>().value(i)).map(plain);
            }
            DataType::Time32(TimeUnit::Second) => {
                let v = a.as_primitive::<Time32SecondType>().value(i);
                return tc::time32s_to_time(v).map(time);
            }
            DataType::Time32(_) => {
                let v = a.as_primitive::<Time32MillisecondType>().value(i);
                return tc::time32ms_to_time(v).map(time);
            }
            DataType::Time64(TimeUnit::Microsecond) => {
                let v = a.as_primitive::<Time64MicrosecondType>().value(i);
                return tc::time64us_to_time(v).map(time);
            }
            DataType::Time64(_) => {
                let v = a.as_primitive::<Time64NanosecondType>().value(i);
                return tc::time64ns_to_time(v).map(time);
            }
            DataType::Timestamp(TimeUnit::Second, _) => {
                tc::timestamp_s_to_datetime(a.as_primitive::<TimestampSecondType>().value(i))
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                let v = a.as_primitive::<TimestampMillisecondType>().value(i);
                tc::timestamp_ms_to_datetime(v)
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let v = a.as_primitive::<TimestampMicrosecondType>().value(i);
                tc::timestamp_us_to_datetime(v)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                let v = a.as_primitive::<TimestampNanosecondType>().value(i);
                tc::timestamp_ns_to_datetime(v)
            }
            _ => None,
        }?;
        let Some((tz, named)) = &self.zone else {
            return Some(plain(utc));
        };
        let offset = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
        let local = utc.checked_add_signed(chrono::Duration::seconds(i64::from(offset)))?;
        let zone = match named {
            Some(named) => {
                use chrono_tz::OffsetName;
                let name = named.offset_from_utc_datetime(&utc);
                name.abbreviation().map(str::to_string)
            }
            None => None,
        };
        // A zone without an abbreviation is written as its offset, as PostgreSQL does.
        let zone = zone.unwrap_or_else(|| {
            let mut text = String::new();
            let (sign, seconds) = if offset < 0 {
                ('-', -offset)
            } else {
                ('+', offset)
            };
            let _ = write!(text, "{sign}{:02}", seconds / 3600);
            if seconds / 60 % 60 != 0 {
                let _ = write!(text, ":{:02}", seconds / 60 % 60);
            }
            text
        });
        Some(Moment {
            date: Some(local.date()),
            time: local.time(),
            offset,
            zone: Some(zone),
        })
    }
}

/// Formats every value of `values` with the template `template(i)` gives for its row (`None`:
/// the row is NULL), bounded as the growing functions are.
fn format_rows<'t>(
    values: &dyn Array,
    mut template: impl FnMut(usize) -> Option<&'t Template>,
) -> DfResult<StringArray> {
    let reader = Values::new(values)?;
    let mut builder = StringBuilder::with_capacity(values.len(), values.len() * 16);
    let mut text = String::new();
    let mut bytes = 0_u128;
    for i in 0..values.len() {
        let (Some(template), Some(at)) = (template(i), reader.at(i)) else {
            builder.append_null();
            continue;
        };
        text.clear();
        template.format(&at, &mut text)?;
        bytes += text.len() as u128;
        super::bounded::within_generated_bound("to_char()", bytes)?;
        builder.append_value(&text);
    }
    Ok(builder.finish())
}

/// DataFusion's `to_char` (and its alias `date_format`), writing a PostgreSQL template as
/// PostgreSQL does; see the module's documentation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgToChar {
    inner: Arc<ScalarUDF>,
    /// DataFusion's signatures, and a number with a text template.
    signature: Signature,
}

impl ScalarUDFImpl for PgToChar {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args {
            [number, _] if number.is_numeric() => Ok(DataType::Utf8),
            _ => self.inner.return_type(args),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if let [number, template] = args.args.as_slice()
            && number.data_type().is_numeric()
        {
            return super::number_templates::to_char(number, template, args.number_rows);
        }
        let (value, format) = match args.args.as_slice() {
            [value, format] if !matches!(value.data_type(), DataType::Duration(_)) => {
                (value.clone(), format.clone())
            }
            _ => return self.inner.invoke_with_args(args),
        };
        let rows = args.number_rows;
        match &format {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(f))) if is_template(f) => {
                let template = Template::parse(f);
                let array = value.to_array(1)?;
                let texts = format_rows(&array, |_| Some(&template))?;
                match value {
                    ColumnarValue::Scalar(_) => {
                        ScalarValue::try_from_array(&texts, 0).map(ColumnarValue::Scalar)
                    }
                    ColumnarValue::Array(_) => Ok(ColumnarValue::Array(Arc::new(texts))),
                }
            }
            ColumnarValue::Scalar(_) => self.inner.invoke_with_args(args),
            ColumnarValue::Array(formats) => {
                let formats = formats.as_string::<i32>();
                if !formats.iter().flatten().any(is_template) {
                    return self.inner.invoke_with_args(args);
                }
                // Chrono's rows by DataFusion, the templates' here.
                let theirs = self.inner.invoke_with_args(args)?.into_array(rows)?;
                let theirs = theirs.as_string::<i32>();
                let array = value.to_array(rows)?;
                let templates: Vec<Option<Template>> = formats
                    .iter()
                    .map(|f| f.filter(|f| is_template(f)).map(Template::parse))
                    .collect();
                let ours = format_rows(&array, |i| templates[i].as_ref())?;
                let merged: StringArray = (0..rows)
                    .map(|i| match (&templates[i], theirs.is_valid(i)) {
                        (Some(_), _) => ours.is_valid(i).then(|| ours.value(i)),
                        (None, true) => Some(theirs.value(i)),
                        (None, false) => None,
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(merged)))
            }
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: OnceLock<Documentation> = OnceLock::new();
        Some(DOC.get_or_init(|| {
            Documentation::builder(
                datafusion::logical_expr::DocSection {
                    include: true,
                    label: "Time and Date Functions",
                    description: None,
                },
                "Writes a date, time or timestamp as a PostgreSQL template says \
                 ('YYYY-MM-DD HH24:MI:SS', 'FMMonth DDth'), or as a chrono format when the \
                 format has a % ('%Y-%m-%d'); a number as a PostgreSQL numeric template says \
                 ('FM9,999.00').",
                "to_char(expression, format)",
            )
            .build()
        }))
    }
}

/// The parsing functions whose formats may be PostgreSQL templates.
const PARSING: [&str; 8] = [
    "to_timestamp",
    "to_timestamp_seconds",
    "to_timestamp_millis",
    "to_timestamp_micros",
    "to_timestamp_nanos",
    "to_date",
    "to_time",
    "to_unixtime",
];

/// `registered`'s `to_char` and parsing functions, reading PostgreSQL templates.
pub(super) fn wrap(registered: impl Fn(&str) -> Option<Arc<ScalarUDF>>) -> Vec<Arc<ScalarUDF>> {
    let to_char = registered("to_char").map(|inner| {
        let signature = super::number_templates::with_numbers(inner.signature());
        ScalarUDF::new_from_impl(PgToChar { inner, signature })
    });
    let parsing = PARSING
        .iter()
        .filter_map(|name| registered(name))
        .map(|inner| ScalarUDF::new_from_impl(PgFormats { inner }));
    to_char.into_iter().chain(parsing).map(Arc::new).collect()
}

/// A parsing function of DataFusion's whose formats (every argument after the first) may be
/// PostgreSQL templates, each translated into the chrono format that reads it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgFormats {
    inner: Arc<ScalarUDF>,
}

impl PgFormats {
    /// `format` (a string argument) with its templates in chrono's words.
    fn translated(&self, format: ColumnarValue) -> DfResult<ColumnarValue> {
        let translate = |f: &str| match is_template(f) {
            true => Template::parse(f).chrono_format(self.name()),
            false => Ok(f.to_string()),
        };
        let data_type = format.data_type();
        match format {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(f))
                | ScalarValue::LargeUtf8(Some(f))
                | ScalarValue::Utf8View(Some(f)),
            ) if is_template(&f) => ScalarValue::Utf8(Some(translate(&f)?))
                .cast_to(&data_type)
                .map(ColumnarValue::Scalar),
            ColumnarValue::Array(a) if a.data_type().is_string() => {
                let strings = arrow::compute::cast(&a, &DataType::Utf8)?;
                let strings = strings.as_string::<i32>();
                if !strings.iter().flatten().any(is_template) {
                    return Ok(ColumnarValue::Array(a));
                }
                let chrono: StringArray = strings
                    .iter()
                    .map(|f| f.map(translate).transpose())
                    .collect::<DfResult<_>>()?;
                let chrono: ArrayRef = arrow::compute::cast(&chrono, a.data_type())?;
                Ok(ColumnarValue::Array(chrono))
            }
            other => Ok(other),
        }
    }
}

impl ScalarUDFImpl for PgFormats {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    // DataFusion's `to_timestamp` takes the session's time zone from here.
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(PgFormats {
            inner: Arc::new(inner),
        }))
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(args)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let formats = args.args.split_off(1.min(args.args.len()));
        for format in formats {
            let format = self.translated(format)?;
            args.args.push(format);
        }
        self.inner.invoke_with_args(args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Moment {
        let at = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        Moment {
            date: Some(at.date()),
            time: at.time(),
            offset: 0,
            zone: None,
        }
    }

    fn written(template: &str, moment: &Moment) -> String {
        let mut out = String::new();
        Template::parse(template).format(moment, &mut out).unwrap();
        out
    }

    /// Each answer is PostgreSQL 16's for `to_char(TIMESTAMP '…', template)`.
    #[test]
    fn templates_write_what_postgresql_writes() {
        let t = at("2024-03-05 08:07:09.123456");
        let cases = [
            ("YYYY-MM-DD HH24:MI:SS", "2024-03-05 08:07:09"),
            ("YYYY-MM-DD\"T\"HH24:MI:SS.US", "2024-03-05T08:07:09.123456"),
            ("Mon DD, YYYY", "Mar 05, 2024"),
            ("Month", "March    "),
            ("FMMonth FMDDth, YYYY", "March 5th, 2024"),
            (
                "DAY Day day DY Dy dy",
                "TUESDAY   Tuesday   tuesday   TUE Tue tue",
            ),
            ("HH12:MI AM", "08:07 AM"),
            ("HH:MI p.m.", "08:07 a.m."),
            ("D ID DDD IDDD W WW IW Q", "3 2 065 065 1 10 10 1"),
            ("CC J", "21 2460375"),
            ("RM|rm|FMRM", "III |iii |III"),
            ("Y,YYY YYY YY Y IYYY", "2,024 024 24 4 2024"),
            ("MS FF1 FF3 SSSS", "123 1 123 29229"),
            ("DDTH ddth FMDDTH", "05TH 05th 5TH"),
            ("\"YYYY\" \\\"YYYY", "YYYY \"2024"),
            ("BC A.D.", "AD A.D."),
            ("TZ|OF", "|+00"),
        ];
        for (template, expected) in cases {
            assert_eq!(written(template, &t), expected, "template {template:?}");
        }
        assert_eq!(written("HH:MI PM", &at("2024-03-05 00:30:00")), "12:30 AM");
        assert_eq!(written("HH12 PM", &at("2024-03-05 13:00:00")), "01 PM");
        assert_eq!(written("DDth", &at("2024-03-11 00:00:00")), "11th");
        assert_eq!(written("DDth", &at("2024-03-22 00:00:00")), "22nd");
        // 2021-01-03 is in the ISO week 53 of 2020.
        assert_eq!(
            written("IYYY-IW-ID", &at("2021-01-03 00:00:00")),
            "2020-53-7"
        );
    }

    #[test]
    fn a_zone_is_written_by_its_abbreviation_and_offset() {
        let zoned = Moment {
            zone: Some("CET".into()),
            offset: 3600,
            ..at("2024-03-05 08:07:09")
        };
        assert_eq!(written("TZ tz OF TZH:TZM", &zoned), "CET cet +01 +01:00");
        let india = Moment {
            zone: Some("IST".into()),
            offset: 19800,
            ..at("2024-03-05 08:07:09")
        };
        assert_eq!(written("OF", &india), "+05:30");
    }

    #[test]
    fn a_time_has_no_date_fields() {
        let time = Moment {
            date: None,
            ..at("2024-03-05 18:07:09")
        };
        assert_eq!(written("HH12:MI:SS am", &time), "06:07:09 pm");
        let mut out = String::new();
        let refused = Template::parse("YYYY").format(&time, &mut out);
        assert!(refused.unwrap_err().to_string().contains("YYYY"));
    }

    #[test]
    fn templates_become_the_chrono_formats_that_read_them() {
        let cases = [
            ("YYYY-MM-DD HH24:MI:SS", "%Y-%m-%d %H:%M:%S"),
            ("DD/MM/YYYY", "%d/%m/%Y"),
            ("FMDD Mon YYYY HH12:MI AM", "%d %b %Y %I:%M %p"),
            ("YYYY-MM-DD\"T\"HH24:MI:SS.US", "%Y-%m-%dT%H:%M:%S.%6f"),
            ("Day, DD Month YYYY", "%A, %d %B %Y"),
        ];
        for (template, chrono) in cases {
            let translated = Template::parse(template).chrono_format("to_timestamp");
            assert_eq!(translated.unwrap(), chrono, "template {template:?}");
        }
        let hours = Template::parse("YYYY-MM-DD HH:MI").chrono_format("to_timestamp");
        assert_eq!(hours.unwrap(), "%Y-%m-%d %H:%M");
        for unreadable in ["J", "YYYY-Q", "DDth", "CC", "RM", "YYYY-MM-DD HH24"] {
            let refused = Template::parse(unreadable).chrono_format("to_date");
            let message = refused.unwrap_err().to_string();
            assert!(message.contains("read"), "{unreadable}: {message}");
        }
    }
}
